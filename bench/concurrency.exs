# An I/O-bound tool (a 10 ms sleep) served by one worker running 32 calls at
# once, against 32 workers running one each: calls/s and memory.
#
#   mix run bench/concurrency.exs      (ROUNDS=5 SECS=3 CALLERS=64 SLOTS=32 MS=10)
#
# Candidates, started once and measured interleaved over ROUNDS rounds (in
# order, then reversed, ...):
#
# - `processes`:      SLOTS workers, `concurrency: 1`, tool `sleep`
#                     (time.sleep, the GIL released while it sleeps);
# - `threads`:        1 worker, `concurrency: SLOTS`, tool `sleep`, on
#                     SLOTS threads;
# - `asyncio`:        1 worker, `concurrency: SLOTS`, tool `async_sleep`
#                     (asyncio.sleep), on the worker's one event loop.
#
# CALLERS processes call in a loop for SECS seconds; the ceiling is
# SLOTS / MS ms calls/s (3,200 by default). Memory is taken after the rounds,
# over each pool's Python processes: RSS, and private memory
# (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup: what the
# processes do not share, so what each more worker costs).

Code.require_file("support/common.exs", __DIR__)

defmodule Bench.Concurrency do
  import Bench.Common

  @adapter "snakepit_bench_stream_adapter.StreamBenchAdapter"

  def run do
    rounds = env_int("ROUNDS", 5)
    secs = env_int("SECS", 3)
    callers = env_int("CALLERS", 64)
    slots = env_int("SLOTS", 32)
    ms = env_int("MS", 10)

    IO.puts(machine_line("#{callers} callers, #{slots} slots, a #{ms} ms sleep per call"))

    pools = [
      {"processes", start(:bench_processes, size: slots, concurrency: 1), "sleep"},
      {"threads", start(:bench_threads, size: 1, concurrency: slots), "sleep"},
      {"asyncio", start(:bench_asyncio, size: 1, concurrency: slots), "async_sleep"}
    ]

    candidates =
      for {name, {pool, _startup}, tool} <- pools do
        call = fn args -> {:ok, _} = Snakepit.execute(tool, args, pool: pool, timeout: 30_000) end
        # Warm every slot.
        calls_per_s(call, %{"ms" => 1}, slots, 300)
        {name, fn -> calls_per_s(call, %{"ms" => ms}, callers, secs * 1000) end}
      end

    samples = interleave(rounds, candidates, fn run -> run.() end)
    ceiling = slots * 1000 / ms

    IO.puts("")

    IO.puts(
      row([
        "pool",
        "calls/s (median)",
        "of the ceiling",
        "start-up ms",
        "Python processes",
        "RSS MB",
        "private MB"
      ])
    )

    IO.puts(rule(7))

    for {name, {pool, startup}, _tool} <- pools do
      cps = median(samples[name])
      pids = Enum.map(Snakepit.list_workers(pool), & &1.os_pid)
      rss = pids |> Enum.map(&(rss_bytes(&1) || 0)) |> Enum.sum()
      private = pids |> Enum.map(&private_bytes/1) |> Enum.sum()

      IO.puts(
        row([
          name,
          "#{round(cps)}",
          "#{Float.round(cps / ceiling * 100, 1)}%",
          "#{startup}",
          "#{length(pids)}",
          mb(rss),
          mb(private)
        ])
      )
    end
  end

  defp start(name, opts) do
    t0 = System.monotonic_time(:millisecond)

    {:ok, _} =
      Snakepit.Pool.start_link(
        [name: name, adapter: @adapter, python_path: [Path.expand("support/python", __DIR__)]] ++
          opts
      )

    :ok = Snakepit.await_ready(name, 60_000)
    {name, System.monotonic_time(:millisecond) - t0}
  end

  # Private_Clean + Private_Dirty of a process, in bytes (0 if it is gone).
  defp private_bytes(os_pid) do
    case File.read("/proc/#{os_pid}/smaps_rollup") do
      {:ok, text} ->
        ~r/^Private_(?:Clean|Dirty):\s+(\d+) kB/m
        |> Regex.scan(text)
        |> Enum.map(fn [_, kb] -> String.to_integer(kb) * 1024 end)
        |> Enum.sum()

      {:error, _} ->
        0
    end
  end
end

Bench.Concurrency.run()
