# Snakepit vs a hand-written Elixir Port pool, driving the same Python worker.
#
#   mix run bench/roundtrip.exs            (ROUNDS=5 SECONDS=1 by default)
#
# Both candidates run `python3 -m snakepit_bridge` with the demo adapter's
# `echo` tool, 2 workers each, and are measured interleaved (A B A B ...) in
# several rounds so that background noise hits both alike. Figures are
# medians over rounds; ratios are Snakepit / Port (latency: below 1.0 means
# Snakepit is faster; throughput: above 1.0 means Snakepit is faster).
# Throughput also runs a Snakepit pool with `pipeline_depth: 4`.

Code.require_file("support/msgpack.exs", __DIR__)
Code.require_file("support/port_pool.exs", __DIR__)

defmodule Bench.Roundtrip do
  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    rounds = env_int("ROUNDS", 5)
    seconds = env_int("SECONDS", 1)
    header(rounds, seconds)

    {:ok, _} = Snakepit.Pool.start_link(name: :bench, size: 2, adapter: @adapter)
    :ok = Snakepit.await_ready(:bench, 30_000)

    {:ok, _} =
      Snakepit.Pool.start_link(name: :bench_p4, size: 2, adapter: @adapter, pipeline_depth: 4)

    :ok = Snakepit.await_ready(:bench_p4, 30_000)
    env = [{"PYTHONPATH", Path.join(:code.priv_dir(:snakepit), "python")}]
    ports = List.to_tuple(for _ <- 1..2, do: elem(Bench.PortPool.start(@adapter, env), 1))
    next = :atomics.new(1, [])

    candidates = [
      {"snakepit", fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :bench) end},
      {"snakepit_p4", fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :bench_p4) end},
      {"port",
       fn args ->
         port = elem(ports, rem(:atomics.add_get(next, 1, 1), 2))
         {:ok, _} = Bench.PortPool.call(port, "echo", args)
       end}
    ]

    payloads = [
      {"tiny (4 B)", %{"value" => "ping"}, 2_000},
      {"10 KB", %{"value" => :crypto.strong_rand_bytes(10_000)}, 1_000},
      {"1 MB", %{"value" => :crypto.strong_rand_bytes(1_000_000)}, 60}
    ]

    # Warm both paths up.
    for {_, call} <- candidates, _ <- 1..500, do: call.(%{"value" => "warm"})

    IO.puts("\n## Latency, 1 caller (µs per call; p50 / p99 over all calls, interleaved rounds)\n")
    IO.puts(row(["payload", "snakepit p50", "snakepit p99", "port p50", "port p99", "p50 ratio"]))
    IO.puts(row(List.duplicate("---", 6)))

    # Latency with one caller: pipelining changes nothing there, so the
    # default pool and the Port only.
    latency_candidates = Enum.reject(candidates, fn {name, _} -> name == "snakepit_p4" end)

    for {label, args, n} <- payloads do
      samples = interleave(rounds, latency_candidates, fn call -> latencies(call, args, n) end)
      s = samples |> Map.fetch!("snakepit") |> List.flatten() |> Enum.sort()
      p = samples |> Map.fetch!("port") |> List.flatten() |> Enum.sort()

      IO.puts(
        row([
          label,
          us(pct(s, 50)),
          us(pct(s, 99)),
          us(pct(p, 50)),
          us(pct(p, 99)),
          ratio(pct(s, 50), pct(p, 50))
        ])
      )
    end

    IO.puts("\n## Throughput, tiny call, 2 workers (calls/s; median of rounds)\n")
    IO.puts("snakepit_p4 is the same pool with `pipeline_depth: 4`.\n")

    IO.puts(
      row(["callers", "snakepit", "snakepit_p4", "port", "snakepit / port", "snakepit_p4 / port"])
    )

    IO.puts(row(List.duplicate("---", 6)))

    for callers <- [1, 8, 64] do
      samples =
        interleave(rounds, candidates, fn call ->
          throughput(call, %{"value" => "ping"}, callers, seconds * 1000)
        end)

      s = median(samples["snakepit"])
      s4 = median(samples["snakepit_p4"])
      p = median(samples["port"])

      IO.puts(
        row([
          "#{callers}",
          "#{round(s)}",
          "#{round(s4)}",
          "#{round(p)}",
          ratio(s, p),
          ratio(s4, p)
        ])
      )
    end

    IO.puts("\nload average after the run: #{loadavg()}")
  end

  # Runs `measure` for each candidate, alternating which goes first.
  defp interleave(rounds, candidates, measure) do
    Enum.reduce(1..rounds, %{}, fn round, acc ->
      order = if rem(round, 2) == 0, do: Enum.reverse(candidates), else: candidates

      Enum.reduce(order, acc, fn {name, call}, acc ->
        Map.update(acc, name, [measure.(call)], &[measure.(call) | &1])
      end)
    end)
  end

  defp latencies(call, args, n) do
    for _ <- 1..n do
      t0 = System.monotonic_time()
      call.(args)
      System.monotonic_time() - t0
    end
  end

  defp throughput(call, args, callers, ms) do
    deadline = System.monotonic_time(:millisecond) + ms

    1..callers
    |> Enum.map(fn _ -> Task.async(fn -> loop(call, args, deadline, 0) end) end)
    |> Enum.map(&Task.await(&1, ms + 30_000))
    |> Enum.sum()
    |> Kernel./(ms / 1000)
  end

  defp loop(call, args, deadline, n) do
    if System.monotonic_time(:millisecond) < deadline do
      call.(args)
      loop(call, args, deadline, n + 1)
    else
      n
    end
  end

  defp pct(sorted, p), do: Enum.at(sorted, min(length(sorted) - 1, div(length(sorted) * p, 100)))
  defp median(xs), do: xs |> Enum.sort() |> Enum.at(div(length(xs), 2))

  defp us(native),
    do: "#{Float.round(System.convert_time_unit(native, :native, :nanosecond) / 1000, 1)}"

  defp ratio(a, b), do: "#{Float.round(a / b, 2)}"
  defp row(cells), do: "| " <> Enum.join(cells, " | ") <> " |"
  defp env_int(name, default), do: String.to_integer(System.get_env(name, "#{default}"))
  defp loadavg, do: File.read!("/proc/loadavg") |> String.trim()

  defp header(rounds, seconds) do
    IO.puts("# Snakepit roundtrip benchmark")

    IO.puts(
      "#{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, " <>
        "Elixir #{System.version()}, #{rounds} rounds, #{seconds} s per throughput sample, " <>
        "load average before: #{loadavg()}"
    )
  end
end

Bench.Roundtrip.run()
