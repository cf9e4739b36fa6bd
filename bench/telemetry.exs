# What Snakepit's telemetry costs a tiny call.
#
#   mix run bench/telemetry.exs     (ROUNDS=20 CALLS=1000 by default; 1-2 min)
#
# One pool of 2 workers of the demo adapter, `Snakepit.execute("echo",
# %{value: 1}, pool: p)`, under three conditions switched inside the run:
#
# - A: `:telemetry` absent: Snakepit's flag false (what
#      `Snakepit.Telemetry.refresh/0` sets when the module is not loaded),
#      so no metadata is built and nothing is emitted;
# - B: `:telemetry` present, no handler attached: a bench-local stand-in
#      (bench/support/telemetry_stub.exs) whose execute/3 does what the
#      package's does (a persistent_term read, an ETS lookup), then
#      `Snakepit.Telemetry.refresh/0` (the flag true). Each call emits
#      [:snakepit, :call, :start], [:snakepit, :call, :stop] and
#      [:snakepit, :pool, :request];
# - C: as B, with one handler (bumping a counter) attached to the
#      [:snakepit, :call, :start] and [:snakepit, :call, :stop] events.
#      Informational: what a handler costs depends on the handler.
#
# and A2, which is A again. With 1 caller and with 8 callers, each making
# CALLS calls per round, the conditions run interleaved (A B C A2, then
# A2 C B A, ...) over ROUNDS rounds, 200 untimed calls after each switch.
# p50 / p99 are over all calls of all rounds. A sanity check first counts,
# with call count tracing, the :telemetry.execute/3 calls and handler runs
# per call in A, B and C.
#
# Ratios to A: of the pooled p50 and p99, and the median (min–max) over
# rounds of the ratio of the round's p50s. The noise to hold B / A against
# is A against itself: A2 / A (measured exactly as B / A is), and A's calls
# split into the first and second half of the rounds and into odd and even
# rounds (A runs first in odd rounds, last in even ones). A B / A no
# farther from 1.0 than these is within noise.
#
# Then the pieces alone, in tight loops (ns per call, median of 15 runs of
# 200,000, loop and fun call included, an empty fun's for reference):
# `Snakepit.Correlation.new/0`, `:erlang.unique_integer/1`,
# `Snakepit.Telemetry.enabled?/0`, the stand-in's execute/3 with no handler
# and with a handler bumping a counter (as C's), and a replica of what a
# call does in B beyond A (its three events' metadata, measurements and
# execute/3 calls, copied from `Snakepit.execute/3`): the CPU time B should
# add to a call, to hold against B - A.
#
# Last, pairs: one caller times two calls back to back, CALLS pairs of each
# kind per round over ROUNDS rounds, the kinds interleaved and which call
# goes first alternating: A then A again (the noise), A then B, and a call
# whose correlation id is generated then one given `correlation_id:` (both
# A). Before each timed call Snakepit's flag is set, and exactly one
# persistent_term changes value (the flag, or a dummy), so every call
# follows the same untimed put (which can move the p50s away from those of
# the tables above; read the differences). "median of differences" is over
# all pairs; per round, the median (min–max) over rounds of each round's
# median difference.

Code.require_file("support/common.exs", __DIR__)
Code.require_file("support/telemetry_stub.exs", __DIR__)

defmodule Bench.Telemetry do
  import Bench.Common

  @pool :bench_telemetry
  @adapter "snakepit_bridge.examples.demo.DemoAdapter"
  @flag {Snakepit.Telemetry, :enabled}
  @handler_id "bench-telemetry-handler"
  @call_events [[:snakepit, :call, :start], [:snakepit, :call, :stop]]
  @counter_key {__MODULE__, :counter}
  @dummy {__MODULE__, :dummy}

  def run do
    rounds = env_int("ROUNDS", 20)
    calls = env_int("CALLS", 1_000)

    IO.puts("# Snakepit telemetry overhead benchmark")
    IO.puts(machine_line("#{rounds} rounds, #{calls} calls per caller and round, 2 workers"))

    :ok = :telemetry.start()
    :persistent_term.put(@counter_key, :counters.new(1, [:write_concurrency]))
    {:ok, _} = Snakepit.Pool.start_link(name: @pool, size: 2, adapter: @adapter)
    :ok = Snakepit.await_ready(@pool, 60_000)

    # A2 is A again: the same condition measured in the same way as B, so
    # that A2 / A shows what "no difference" looks like in this run.
    conditions = [{"A", :absent}, {"B", :no_handler}, {"C", :handler}, {"A2", :absent}]
    sanity_check(Enum.take(conditions, 3))

    # Warm every path up.
    for {_, c} <- conditions, callers <- [1, 8] do
      switch(c)
      measure(callers, 1_000)
    end

    IO.puts("\n## Tiny call latency (µs)\n")

    IO.puts(
      row(["callers", "condition", "calls", "p50", "p99", "p50 per round (min–max)", "calls/s"])
    )

    IO.puts(rule(7))

    all =
      for callers <- [1, 8] do
        samples =
          interleave(rounds, conditions, fn c ->
            switch(c)
            measure(callers, 200)
            measure(callers, calls)
          end)

        # Oldest round first.
        samples = Map.new(samples, fn {name, runs} -> {name, Enum.reverse(runs)} end)

        for {name, _} <- conditions do
          s = pooled(samples[name])
          per_round = Enum.map(samples[name], &p50/1)

          IO.puts(
            row([
              "#{callers}",
              name,
              "#{length(s)}",
              us(pct(s, 50)),
              us(pct(s, 99)),
              "#{us(Enum.min(per_round))}–#{us(Enum.max(per_round))}",
              "#{round(median(Enum.map(samples[name], & &1.rate)))}"
            ])
          )
        end

        {callers, samples}
      end

    IO.puts("\n## Ratios, and the noise to hold them against\n")

    IO.puts(row(["callers", "ratio", "p50", "p99", "p50 per round: median (min–max)"]))

    IO.puts(rule(5))

    for {callers, samples} <- all do
      a = samples["A"]
      {a1, a2} = Enum.split(a, div(length(a), 2))
      {odd, even} = a |> Enum.with_index() |> Enum.split_with(fn {_, i} -> rem(i, 2) == 0 end)
      {odd, even} = {Enum.map(odd, &elem(&1, 0)), Enum.map(even, &elem(&1, 0))}

      comparisons = [
        {"A2 / A (noise)", samples["A2"], a, true},
        {"A 1st half / A 2nd half (noise)", a1, a2, false},
        {"A odd rounds / A even rounds (noise)", odd, even, false},
        {"B / A", samples["B"], a, true},
        {"C / A", samples["C"], a, true}
      ]

      for {label, x, y, paired?} <- comparisons do
        IO.puts(
          row([
            "#{callers}",
            label,
            split_ratio(x, y, 50),
            split_ratio(x, y, 99),
            if(paired?, do: per_round_ratio(x, y), else: "")
          ])
        )
      end
    end

    pieces()
    paired(rounds, calls)
    switch(:absent)
    IO.puts("\nload average after the run: #{loadavg()}")
  end

  defp call, do: {:ok, _} = Snakepit.execute("echo", %{value: 1}, pool: @pool)

  # Conditions. Each detaches C's handler first (C may follow C).
  defp switch(:absent) do
    detach()
    :persistent_term.put(@flag, false)
  end

  defp switch(:no_handler) do
    detach()
    true = Snakepit.Telemetry.refresh()
  end

  defp switch(:handler) do
    detach()
    true = Snakepit.Telemetry.refresh()
    :ok = :telemetry.attach_many(@handler_id, @call_events, &__MODULE__.handle/4, nil)
  end

  defp detach, do: :telemetry.detach(@handler_id)

  @doc false
  def handle(_event, _measurements, _metadata, _config),
    do: :counters.add(:persistent_term.get(@counter_key), 1, 1)

  defp handled, do: :counters.get(:persistent_term.get(@counter_key), 1)

  # Per call, in each condition: :telemetry.execute/3 calls, handler runs.
  defp sanity_check(conditions) do
    n = 100
    IO.puts("\nsanity check, per call (#{n} calls each): :telemetry.execute/3 calls, handler runs")

    for {name, c} <- conditions do
      switch(c)
      call()
      :erlang.trace_pattern({:telemetry, :execute, 3}, true, [:call_count])
      before = handled()
      for _ <- 1..n, do: call()
      {:call_count, executes} = :erlang.trace_info({:telemetry, :execute, 3}, :call_count)
      :erlang.trace_pattern({:telemetry, :execute, 3}, false, [:call_count])
      IO.puts("  #{name}: #{executes / n}, #{(handled() - before) / n}")
    end
  end

  # `callers` processes making `calls` calls each: their latencies (native
  # units) and the calls/s.
  defp measure(callers, calls) do
    t0 = System.monotonic_time()

    latencies =
      1..callers
      |> Enum.map(fn _ -> Task.async(fn -> caller(calls) end) end)
      |> Enum.flat_map(&Task.await(&1, 120_000))

    %{latencies: latencies, rate: length(latencies) / (to_us(System.monotonic_time() - t0) / 1.0e6)}
  end

  defp caller(calls) do
    for _ <- 1..calls do
      t0 = System.monotonic_time()
      call()
      System.monotonic_time() - t0
    end
  end

  defp pooled(runs), do: runs |> Enum.flat_map(& &1.latencies) |> Enum.sort()
  defp p50(run), do: run.latencies |> Enum.sort() |> pct(50)

  defp split_ratio(runs1, runs2, p),
    do: ratio(pct(pooled(runs1), p), pct(pooled(runs2), p))

  defp per_round_ratio(runs1, runs2) do
    r = Enum.zip_with(runs1, runs2, &(p50(&1) / p50(&2)))
    "#{Float.round(median(r), 2)} (#{Float.round(Enum.min(r), 2)}–#{Float.round(Enum.max(r), 2)})"
  end

  # The pieces alone, in tight loops.
  defp pieces do
    n = 200_000
    event = [:snakepit, :pool, :request]
    m = %{duration: 1, queue_time: 1, run_time: 1}
    md = %{pool: @pool, command: "echo", correlation_id: "x"}

    candidates = [
      {"empty fun (loop and call)", fn -> :ok end},
      {"Snakepit.Correlation.new/0", &Snakepit.Correlation.new/0},
      {":erlang.unique_integer([:positive])", fn -> :erlang.unique_integer([:positive]) end},
      {"Snakepit.Telemetry.enabled?/0", &Snakepit.Telemetry.enabled?/0},
      {":telemetry.execute/3, no handler", fn -> :telemetry.execute(event, m, md) end},
      {":telemetry.execute/3, a counting handler",
       fn -> :telemetry.execute([:bench, :handled], m, md) end},
      {"a call's emission in B (replica)", &emission/0}
    ]

    switch(:no_handler)
    :ok = :telemetry.attach("bench-pieces", [:bench, :handled], &__MODULE__.handle/4, nil)
    samples = interleave(15, candidates, fn fun -> tight(fun, n) end)
    :telemetry.detach("bench-pieces")
    switch(:absent)

    IO.puts("\n## The pieces alone (ns per call, median of 15 runs of 200,000)\n")
    IO.puts(row(["function", "ns per call", "minus the empty fun's"]))
    IO.puts(rule(3))
    empty = median(samples["empty fun (loop and call)"])

    for {name, _} <- candidates do
      ns = median(samples[name])
      IO.puts(row([name, "#{Float.round(ns, 1)}", "#{Float.round(ns - empty, 1)}"]))
    end
  end

  # What a call does for telemetry in B beyond A, copied from
  # Snakepit.execute/3's attempt/4 and emit_call_end/5 (a successful call,
  # no retry), with its worker's figures made up.
  defp emission do
    metadata = %{
      pool: @pool,
      command: "echo",
      session_id: nil,
      correlation_id: "bench-request-1",
      attempt: 1
    }

    Snakepit.Telemetry.emit(
      [:snakepit, :call, :start],
      Snakepit.Telemetry.start_measurements(),
      metadata
    )

    started = System.monotonic_time()
    duration = System.monotonic_time() - started

    measurements = %{
      duration: duration,
      queue_time: System.convert_time_unit(2_000, :nanosecond, :native),
      run_time: System.convert_time_unit(9_000, :nanosecond, :native)
    }

    metadata = Map.merge(metadata, %{worker_os_pid: 4242, outcome: :ok, error: nil})
    Snakepit.Telemetry.emit([:snakepit, :call, :stop], measurements, metadata)
    Snakepit.Telemetry.emit([:snakepit, :pool, :request], measurements, metadata)
  end

  defp tight(fun, n) do
    t0 = System.monotonic_time()
    loop(fun, n)
    System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / n
  end

  defp loop(_fun, 0), do: :ok

  defp loop(fun, n) do
    fun.()
    loop(fun, n - 1)
  end

  # One caller times two calls back to back, CALLS pairs of each kind per
  # round, the kinds interleaved and which call goes first alternating.
  # Before each timed call exactly one persistent_term changes value
  # (Snakepit's flag, or a dummy term when the flag stays), so that every
  # call follows the same untimed put.
  defp paired(rounds, calls) do
    detach()

    given = fn ->
      {:ok, _} =
        Snakepit.execute("echo", %{value: 1}, pool: @pool, correlation_id: "bench-request-1")
    end

    kinds = [
      {"A2 - A (noise)", {false, &call/0}, {false, &call/0}},
      {"B - A", {false, &call/0}, {true, &call/0}},
      {"id given - id generated (A)", {false, &call/0}, {false, given}}
    ]

    per_round =
      for _ <- 1..rounds do
        for i <- 1..calls, {name, x, y} <- kinds do
          {tx, ty} =
            if rem(i, 2) == 0 do
              ty = timed_after_put(y)
              {timed_after_put(x), ty}
            else
              tx = timed_after_put(x)
              {tx, timed_after_put(y)}
            end

          {name, tx, ty}
        end
        |> Enum.group_by(&elem(&1, 0), fn {_, tx, ty} -> {tx, ty} end)
      end

    :persistent_term.put(@flag, false)

    IO.puts("\n## Paired, 1 caller: two calls timed back to back (µs)\n")

    IO.puts(
      row([
        "pair (second - first)",
        "pairs",
        "first p50",
        "second p50",
        "median of differences",
        "per round: median (min–max)"
      ])
    )

    IO.puts(rule(6))

    for {name, _, _} <- kinds do
      rounds_pairs = Enum.map(per_round, & &1[name])
      pairs = Enum.concat(rounds_pairs)
      diffs = Enum.map(rounds_pairs, fn ps -> ps |> Enum.map(fn {x, y} -> y - x end) end)
      medians = Enum.map(diffs, &median/1)

      IO.puts(
        row([
          name,
          "#{length(pairs)}",
          us(pct(Enum.sort(Enum.map(pairs, &elem(&1, 0))), 50)),
          us(pct(Enum.sort(Enum.map(pairs, &elem(&1, 1))), 50)),
          signed(median(Enum.concat(diffs))),
          "#{signed(median(medians))} (#{signed(Enum.min(medians))}–#{signed(Enum.max(medians))})"
        ])
      )
    end
  end

  # Sets Snakepit's flag to `flag`, then times `fun`. Exactly one
  # persistent_term changes value: the flag, or the dummy if the flag
  # already holds `flag`.
  defp timed_after_put({flag, fun}) do
    if :persistent_term.get(@flag) == flag do
      :persistent_term.put(@dummy, not :persistent_term.get(@dummy, false))
    else
      :persistent_term.put(@flag, flag)
    end

    time(fun)
  end

  defp time(fun) do
    t0 = System.monotonic_time()
    fun.()
    System.monotonic_time() - t0
  end

  defp signed(native) do
    v = Float.round(to_us(native) * 1.0, 2)
    if v >= 0, do: "+#{v}", else: "#{v}"
  end
end

Bench.Telemetry.run()
