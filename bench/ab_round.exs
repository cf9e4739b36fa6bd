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
# - `cpu_64`, `cpu_p4_64`: CPU µs per call at 64 callers, the BEAM's and its
#   child processes' (shepherds, workers) user + system time from /proc;
# - `port_*`: the same figures for the Port pool.

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
    ms = @seconds * 1000
    pids = [System.pid() | descendants(System.pid())]
    cpu0 = cpu_ticks(pids)
    deadline = System.monotonic_time(:millisecond) + ms

    calls =
      1..callers
      |> Enum.map(fn _ -> Task.async(fn -> loop(call, args, deadline, 0) end) end)
      |> Enum.map(&Task.await(&1, ms + 30_000))
      |> Enum.sum()

    cpu_us = (cpu_ticks(pids) - cpu0) * 1_000_000 / clock_ticks()
    {calls / @seconds, cpu_us / max(calls, 1)}
  end

  defp loop(call, args, deadline, n) do
    if System.monotonic_time(:millisecond) < deadline do
      call.(args)
      loop(call, args, deadline, n + 1)
    else
      n
    end
  end

  # utime + stime of each pid (all its threads), in clock ticks.
  defp cpu_ticks(pids) do
    pids
    |> Enum.map(fn pid ->
      case File.read("/proc/#{pid}/stat") do
        {:ok, stat} ->
          # Fields after the command's closing paren; utime and stime are
          # the 14th and 15th fields of the whole line.
          [_, rest] = String.split(stat, ") ", parts: 2)
          fields = String.split(rest, " ")
          String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))

        {:error, _} ->
          0
      end
    end)
    |> Enum.sum()
  end

  defp descendants(root) do
    parents =
      for dir <- File.ls!("/proc"),
          String.match?(dir, ~r/^\d+$/),
          {:ok, stat} <- [File.read("/proc/#{dir}/stat")] do
        [_, rest] = String.split(stat, ") ", parts: 2)
        {dir, rest |> String.split(" ") |> Enum.at(1)}
      end

    collect([root], parents, [])
  end

  defp collect([], _parents, acc), do: acc

  defp collect([pid | rest], parents, acc) do
    children = for {child, ^pid} <- parents, do: child
    collect(children ++ rest, parents, children ++ acc)
  end

  defp clock_ticks do
    {ticks, 0} = System.cmd("getconf", ["CLK_TCK"])
    ticks |> String.trim() |> String.to_integer()
  end

  defp percentile(xs, p) do
    sorted = Enum.sort(xs)
    Enum.at(sorted, min(length(sorted) - 1, div(length(sorted) * p, 100)))
  end

  defp mean(xs), do: Enum.sum(xs) / length(xs)
end

Bench.ABRound.run()
