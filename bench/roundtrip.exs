# Snakepit vs a hand-written Elixir Port pool, driving the same Python worker,
# with the floors beneath both.
#
#   mix run bench/roundtrip.exs            (ROUNDS=5 SECONDS=1 by default)
#
# Both candidates run the same Python bridge (Snakepit's workers through
# priv/python/launcher/snakepit_worker.py, the Port pool's as `python3 -m
# snakepit_bridge`) with the demo adapter's `echo` tool, 2 workers each, and are measured interleaved (A B ... then
# reversed) in several rounds so that background noise hits all alike.
# Figures are medians over rounds unless said otherwise; ratios are Snakepit /
# the other (latency and CPU: below 1.0 means Snakepit is cheaper; throughput:
# above 1.0 means Snakepit is faster).
#
# - Latency, 1 caller, per payload (4 B, 10 KB, 1 MB): p50 and p99 over all
#   calls of all rounds for snakepit (the default pool) and port, and the p50
#   of two floors, in the same interleaved rounds:
#     py_raw  a `{:packet, 4}` Port to bench/support/raw_pipe_echo.py: Python
#             echoing the payload's bytes over its pipes, no codec, no
#             Snakepit protocol
#     c_pipe  the C echo bench/support/raw_pipe_echo.c driven by its own C
#             driver over a pipe pair, entirely outside the BEAM: the raw
#             pipe (compiled with `cc` into _build/bench/; without `cc` its
#             columns are skipped)
#   The floors echo the payload's bytes in a 4-byte-length frame; Snakepit and
#   the Port send `%{"value" => bytes}` in a call frame.
# - Throughput of tiny calls at 1/8/64 callers (calls/s), for snakepit,
#   snakepit_d1 (the same pool with `pipeline_depth: 1`, no pipelining; the default is 4) and port.
# - CPU µs per tiny call at 64 callers: the CPU time (from
#   /proc/<pid>/task/*/schedstat) of the BEAM and all its descendant OS
#   processes (shepherds, Python workers, the Ports' Pythons) during each
#   64-caller throughput sample, divided by the calls it made.

Code.require_file("support/common.exs", __DIR__)
Code.require_file("support/msgpack.exs", __DIR__)
Code.require_file("support/port_pool.exs", __DIR__)

defmodule Bench.Roundtrip do
  import Bench.Common

  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    rounds = env_int("ROUNDS", 5)
    seconds = env_int("SECONDS", 1)
    IO.puts("# Snakepit roundtrip benchmark")
    IO.puts(machine_line("#{rounds} rounds, #{seconds} s per throughput sample"))

    {:ok, _} = Snakepit.Pool.start_link(name: :bench, size: 2, adapter: @adapter)
    :ok = Snakepit.await_ready(:bench, 30_000)

    {:ok, _} =
      Snakepit.Pool.start_link(name: :bench_d1, size: 2, adapter: @adapter, pipeline_depth: 1)

    :ok = Snakepit.await_ready(:bench_d1, 30_000)
    env = [{"PYTHONPATH", Path.join(:code.priv_dir(:snakepit), "python")}]
    ports = List.to_tuple(for _ <- 1..2, do: elem(Bench.PortPool.start(@adapter, env), 1))
    next = :atomics.new(1, [])

    candidates = [
      {"snakepit", fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :bench) end},
      {"snakepit_d1", fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :bench_d1) end},
      {"port",
       fn args ->
         port = elem(ports, rem(:atomics.add_get(next, 1, 1), 2))
         {:ok, _} = Bench.PortPool.call(port, "echo", args)
       end}
    ]

    py_raw = packet_port(System.find_executable("python3"), [script("raw_pipe_echo.py")])
    c_exe = c_echo("(no cc: the c_pipe columns are skipped)")

    # Warm all paths up (c_pipe starts afresh on each sample).
    for {_, call} <- candidates, _ <- 1..500, do: call.(%{"value" => "warm"})
    for _ <- 1..500, do: port_echo(py_raw, "warm")

    latency(rounds, candidates, py_raw, c_exe)
    cpu = throughput(rounds, seconds, candidates)
    cpu_table(cpu)
    IO.puts("\nload average after the run: #{loadavg()}")
  end

  ## Latency, 1 caller

  # Pipelining changes nothing with one caller, so the default pool and the
  # Port, against the floors. Each candidate is
  # `fn bytes, n -> [native time of each of n round trips] end`.
  defp latency(rounds, candidates, py_raw, c_exe) do
    timed = fn name ->
      {_, call} = List.keyfind(candidates, name, 0)

      {name,
       fn bin, n ->
         args = %{"value" => bin}
         latencies(fn -> call.(args) end, n)
       end}
    end

    c_pipe =
      if c_exe, do: [{"c_pipe", fn bin, n -> c_drive(c_exe, byte_size(bin), n) end}], else: []

    floors = c_pipe ++ [{"py_raw", fn bin, n -> latencies(fn -> port_echo(py_raw, bin) end, n) end}]

    latency_candidates = [timed.("snakepit"), timed.("port")] ++ floors
    floor_names = Enum.map(floors, &elem(&1, 0))

    payloads = [
      {"tiny (4 B)", "ping", 2_000},
      {"10 KB", :crypto.strong_rand_bytes(10_000), 1_000},
      {"1 MB", :crypto.strong_rand_bytes(1_000_000), 60}
    ]

    IO.puts("\n## Latency, 1 caller (µs per call; p50 / p99 over all calls, interleaved rounds)\n")

    IO.puts(
      "py_raw: Python echoing the bytes over a `{:packet, 4}` Port, no protocol; " <>
        "c_pipe: C echoing them over a pipe, driven outside the BEAM.\n"
    )

    IO.puts(
      row(
        ["payload", "snakepit p50", "snakepit p99", "port p50", "port p99"] ++
          Enum.map(floor_names, &"#{&1} p50") ++
          ["snakepit / port"] ++ Enum.map(floor_names, &"snakepit / #{&1}")
      )
    )

    IO.puts(rule(6 + 2 * length(floor_names)))

    for {label, bin, n} <- payloads do
      samples = interleave(rounds, latency_candidates, fn measure -> measure.(bin, n) end)
      sorted = Map.new(samples, fn {k, rs} -> {k, rs |> List.flatten() |> Enum.sort()} end)
      s = sorted["snakepit"]
      p = sorted["port"]

      IO.puts(
        row(
          [label, us(pct(s, 50)), us(pct(s, 99)), us(pct(p, 50)), us(pct(p, 99))] ++
            Enum.map(floor_names, &us(pct(sorted[&1], 50))) ++
            [ratio(pct(s, 50), pct(p, 50))] ++
            Enum.map(floor_names, &ratio(pct(s, 50), pct(sorted[&1], 50)))
        )
      )
    end
  end

  defp latencies(call, n) do
    for _ <- 1..n do
      t0 = System.monotonic_time()
      call.()
      System.monotonic_time() - t0
    end
  end

  ## Throughput, tiny calls; CPU per call at 64 callers

  # Prints the throughput table; returns the CPU µs per call of each
  # candidate in each 64-caller sample.
  defp throughput(rounds, seconds, candidates) do
    IO.puts("\n## Throughput, tiny call, 2 workers (calls/s; median of rounds)\n")
    IO.puts("snakepit_d1 is the same pool with `pipeline_depth: 1` (the default is 4).\n")

    IO.puts(
      row(["callers", "snakepit", "snakepit_d1", "port", "snakepit / port", "snakepit_d1 / port"])
    )

    IO.puts(rule(6))

    # The CPU figures of the last (64-caller) samples.
    for callers <- [1, 8, 64] do
      samples =
        interleave(rounds, candidates, fn call ->
          sample(call, %{"value" => "ping"}, callers, seconds, callers == 64)
        end)

      rates = Map.new(samples, fn {k, xs} -> {k, median(Enum.map(xs, &elem(&1, 0)))} end)
      %{"snakepit" => s, "snakepit_d1" => s1, "port" => p} = rates

      IO.puts(
        row([
          "#{callers}",
          "#{round(s)}",
          "#{round(s1)}",
          "#{round(p)}",
          ratio(s, p),
          ratio(s1, p)
        ])
      )

      Map.new(samples, fn {k, xs} -> {k, Enum.map(xs, &elem(&1, 1))} end)
    end
    |> List.last()
  end

  # {calls/s, CPU µs per call or nil}: with `cpu?`, the CPU time the BEAM and
  # all its descendant OS processes spent during the sample, per call made.
  defp sample(call, args, callers, seconds, cpu?) do
    if cpu? do
      pids = [System.pid() | descendants(System.pid())]
      cpu0 = cpu_ns(pids)
      rate = calls_per_s(call, args, callers, seconds * 1000)
      cpu = cpu_ns(pids) - cpu0
      {rate, cpu / 1000 / max(rate * seconds, 1)}
    else
      {calls_per_s(call, args, callers, seconds * 1000), nil}
    end
  end

  defp cpu_table(cpu) do
    %{"snakepit" => s, "snakepit_d1" => s1, "port" => p} =
      Map.new(cpu, fn {k, xs} -> {k, median(xs)} end)

    IO.puts("\n## CPU per tiny call, 64 callers, 2 workers (µs; median of rounds)\n")

    n = length(descendants(System.pid()))

    IO.puts(
      "CPU time of the BEAM and all its descendant OS processes (#{n} now: shepherds, " <>
        "Python workers, the Ports' Pythons) during each 64-caller\n" <>
        "throughput sample above, divided by the calls made in it.\n"
    )

    IO.puts(row(["snakepit", "snakepit_d1", "port", "snakepit / port", "snakepit_d1 / port"]))
    IO.puts(rule(5))
    IO.puts(row([cpu_us(s), cpu_us(s1), cpu_us(p), ratio(s, p), ratio(s1, p)]))
  end

  defp cpu_us(us), do: "#{Float.round(us, 1)}"

  defp script(name), do: Path.join([__DIR__, "support", name])
end

Bench.Roundtrip.run()
