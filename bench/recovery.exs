# How fast a pool heals and starts, with the bundled demo adapter.
#
#   mix run bench/recovery.exs             (ROUNDS=10 by default)
#
# Recovery: a pool of 1 worker; the worker is SIGKILLed and a call is made at
# once; the figure is the time from the kill until that call (queued while
# the replacement starts) is answered. Baseline, measured interleaved with
# it: starting a fresh pool of 1 and serving one call. The ratio shows what
# recovery costs beyond starting a worker (backoff, reaping, restart).
#
# Startup: time from `Snakepit.Pool.start_link/1` until every worker has
# finished its handshake (`await_ready/2`), for 8 and 32 workers, with the
# default `startup_batch_size` (8) and with all workers started at once.
#
# Targets: recovery under 300 ms; 8 workers ready in under 1 s on 2 cores.

defmodule Bench.Recovery do
  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    rounds = String.to_integer(System.get_env("ROUNDS", "10"))
    Logger.configure(level: :error)

    IO.puts(
      "# recovery and startup, #{rounds} rounds, #{System.schedulers_online()} schedulers, " <>
        "load average #{load()}\n"
    )

    {:ok, _} = Snakepit.Pool.start_link(name: :recovery, size: 1, adapter: @adapter)
    :ok = Snakepit.await_ready(:recovery, 30_000)

    {recovery, fresh} =
      Enum.map(1..rounds, fn _ -> {recover_once(), fresh_pool_once()} end) |> Enum.unzip()

    IO.puts("| measure | p50 ms | max ms |")
    IO.puts("| --- | --- | --- |")
    row("killed worker serves again", recovery)
    row("fresh pool of 1 serves (baseline)", fresh)
    IO.puts("\nrecovery / fresh start (p50): #{Float.round(median(recovery) / median(fresh), 2)}\n")

    IO.puts("| workers | startup_batch_size | p50 ms to all ready | max ms |")
    IO.puts("| --- | --- | --- | --- |")

    for size <- [8, 32], batch <- Enum.uniq([2, 8, size]) do
      times = Enum.map(1..max(div(rounds, 2), 3), fn _ -> startup_once(size, batch) end)

      IO.puts(
        "| #{size} | #{batch} | #{Float.round(median(times), 1)} | " <>
          "#{Float.round(Enum.max(times), 1)} |"
      )
    end
  end

  defp recover_once do
    [%{os_pid: pid}] = Snakepit.list_workers(:recovery)
    t0 = System.monotonic_time(:microsecond)
    :ok = :os.cmd(~c"kill -KILL #{pid}") |> then(fn _ -> :ok end)
    serve_again(t0, pid)
  end

  # The first call may still reach the dying worker (a :worker error); the
  # one after it queues until the replacement is up.
  defp serve_again(t0, old) do
    case Snakepit.execute("ping", %{}, pool: :recovery, timeout: 10_000) do
      {:ok, _} ->
        [%{os_pid: new}] = Snakepit.list_workers(:recovery)
        true = new != old
        (System.monotonic_time(:microsecond) - t0) / 1000

      {:error, _} ->
        serve_again(t0, old)
    end
  end

  defp fresh_pool_once do
    t0 = System.monotonic_time(:microsecond)
    {:ok, pid} = Snakepit.Pool.start_link(name: :fresh, size: 1, adapter: @adapter)
    {:ok, _} = Snakepit.execute("ping", %{}, pool: :fresh)
    ms = (System.monotonic_time(:microsecond) - t0) / 1000
    stop(pid)
    ms
  end

  defp startup_once(size, batch) do
    t0 = System.monotonic_time(:microsecond)

    {:ok, pid} =
      Snakepit.Pool.start_link(
        name: :startup,
        size: size,
        adapter: @adapter,
        startup_batch_size: batch
      )

    :ok = Snakepit.await_ready(:startup, 60_000)
    ms = (System.monotonic_time(:microsecond) - t0) / 1000
    stop(pid)
    ms
  end

  defp stop(pid) do
    Process.unlink(pid)
    ref = Process.monitor(pid)
    GenServer.stop(pid)
    receive do: ({:DOWN, ^ref, _, _, _} -> :ok)
  end

  defp row(name, times),
    do:
      IO.puts("| #{name} | #{Float.round(median(times), 1)} | #{Float.round(Enum.max(times), 1)} |")

  defp median(list) do
    sorted = Enum.sort(list)
    Enum.at(sorted, div(length(sorted), 2))
  end

  defp load, do: File.read!("/proc/loadavg") |> String.split() |> hd()
end

Bench.Recovery.run()
