# One round of the A/B comparison that `scripts/ab` drives: the roundtrip
# figures of the Snakepit checkout this BEAM runs in, as one line
#
#   AB_RESULT %{"measure" => value, ...}
#
# on stdout. `scripts/ab` runs it alternately in two checkouts (a worktree of
# REF and the working tree) and reports medians and ratios; run it by hand
# only to see one round:
#
#   mix run bench/ab_round.exs
#
# It uses only API that older checkouts have too (`Snakepit.Pool.start_link/1`
# with `:pipeline_depth`, `Snakepit.await_ready/2`, `Snakepit.execute/3`).
# The hand-written Port pool (bench/support/port_pool.exs) always runs the
# bridge of the tree this file is in (AB_PORT_PYTHONPATH), so it is the same
# program in both checkouts: a canary for the machine's mode in that round.
#
# Measures (2 workers, the demo adapter's `echo`):
# - `tiny_p50`, `tiny_mean`, `1kb_p50`, `1mb_p50`: µs per call, 1 caller;
# - `cps_N`, `cps_p4_N`: calls/s with N callers (1, 8, 64), for the default
#   pool and the same pool with `pipeline_depth: 4`;
# - `cpu_64`, `cpu_p4_64`: CPU µs per call at 64 callers, of the BEAM and
#   its descendant processes (shepherds, workers), from /proc schedstat;
# - `port_*`: the same figures for the Port pool.

Code.require_file("support/common.exs", __DIR__)
Code.require_file("support/msgpack.exs", __DIR__)
Code.require_file("support/port_pool.exs", __DIR__)

defmodule Bench.ABRound do
  @adapter "snakepit_bridge.examples.demo.DemoAdapter"
  @seconds 1

  def run do
    {:ok, _} = Snakepit.Pool.start_link(name: :ab, size: 2, adapter: @adapter)
    {:ok, _} = Snakepit.Pool.start_link(name: :ab_p4, size: 2, adapter: @adapter, pipeline_depth: 4)
    :ok = Snakepit.await_ready(:ab, 30_000)
    :ok = Snakepit.await_ready(:ab_p4, 30_000)

    port_path =
      System.get_env("AB_PORT_PYTHONPATH") || Path.join(:code.priv_dir(:snakepit), "python")

    ports =
      List.to_tuple(
        for _ <- 1..2,
            do: elem(Bench.PortPool.start(@adapter, [{"PYTHONPATH", port_path}]), 1)
      )

    next = :atomics.new(1, [])
    default = fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :ab) end
    p4 = fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :ab_p4) end

    port = fn args ->
      {:ok, _} =
        Bench.PortPool.call(elem(ports, rem(:atomics.add_get(next, 1, 1), 2)), "echo", args)
    end

    for call <- [default, p4, port], _ <- 1..500, do: call.(%{"value" => "warm"})

    tiny = %{"value" => "ping"}
    kb = %{"value" => :crypto.strong_rand_bytes(1_000)}
    mb = %{"value" => :crypto.strong_rand_bytes(1_000_000)}

    latency =
      for {name, call} <- [{"", default}, {"port_", port}],
          {label, args, n} <- [{"tiny", tiny, 3_000}, {"1kb", kb, 2_000}, {"1mb", mb, 60}],
          reduce: %{} do
        acc ->
          samples = latencies(call, args, n)
          acc = Map.put(acc, "#{name}#{label}_p50", percentile(samples, 50))
          if label == "tiny", do: Map.put(acc, "#{name}tiny_mean", mean(samples)), else: acc
      end

    throughput =
      for {name, call} <- [{"cps_", default}, {"cps_p4_", p4}, {"port_cps_", port}],
          callers <- [1, 8, 64],
          reduce: %{} do
        acc ->
          {cps, cpu_us} = throughput(call, tiny, callers)
          acc = Map.put(acc, "#{name}#{callers}", cps)

          if callers == 64,
            do: Map.put(acc, String.replace(name, "cps", "cpu") <> "64", cpu_us),
            else: acc
      end

    IO.puts("AB_RESULT " <> inspect(Map.merge(latency, throughput), limit: :infinity))
  end

  defp latencies(call, args, n) do
    for _ <- 1..n do
      t0 = System.monotonic_time()
      call.(args)
      System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
    end
  end

  # Calls/s over @seconds, and the CPU µs the BEAM and its descendants spent
  # per call meanwhile.
  defp throughput(call, args, callers) do
    pids = [System.pid() | Bench.Common.descendants(System.pid())]
    cpu0 = Bench.Common.cpu_ns(pids)
    cps = Bench.Common.calls_per_s(call, args, callers, @seconds * 1000)
    cpu_us = (Bench.Common.cpu_ns(pids) - cpu0) / 1000
    {cps, cpu_us / max(cps * @seconds, 1)}
  end

  defp percentile(xs, p) do
    sorted = Enum.sort(xs)
    Enum.at(sorted, min(length(sorted) - 1, div(length(sorted) * p, 100)))
  end

  defp mean(xs), do: Enum.sum(xs) / length(xs)
end

Bench.ABRound.run()
