# Session routing overhead: a tiny call with and without a session.
#
#   mix run bench/sessions.exs     (ROUNDS=10 CALLS=2000 by default)
#
# One pool of 2 workers running the bench adapter's `echo`
# (bench/support/python/snakepit_bench_stream_adapter.py). Candidates:
#
# - `plain`:          `Snakepit.execute("echo", %{value: 1}, pool: p)`;
# - `strict, even`:   the same with `session_id:` (strict affinity, the
#                     default), each caller with its own session, bound
#                     before the timing starts so that each worker holds
#                     as many (their first calls run two at a time, a 20 ms
#                     `sleep` each, one per worker);
# - `strict, first`:  the same, each session bound by its first timed call;
# - `hint, first`:    `affinity: :hint` (the bound worker if it has room,
#                     else any), bound by its first timed call.
#
# Sessions are fresh each round and ended after it. With 1 caller and with
# 8 callers, each making CALLS calls per round; the candidates run
# interleaved (in order, then reversed, ...) over ROUNDS rounds. Latency
# p50 / p99 is over all the calls of all rounds; calls/s is the median over
# rounds. "extra" is the candidate minus `plain`: at p50, and the median
# over rounds of the per-round difference of mean latencies.
#
# Then a finer interleave, for the routing overhead alone: each caller
# alternates a plain call and a call of its own session (bound evenly as
# above; strict, then hint), CALLS pairs per round, which of the two goes
# first alternating too; "extra" is the median and the mean of the per-pair
# differences session - plain, over all rounds. With 8 callers on 2
# workers a call mostly waits in the queue: a plain call takes whichever
# worker frees first, a strict one waits for its own, so strict's extra
# there is mostly queueing (one shared queue vs one per worker), which
# `hint` (same lookup, any worker when its own is busy) shows.
#
# `strict, even` measures the routing itself. `strict, first` shows what
# the binding can cost: a new session is bound to the worker its first call
# runs on, and a call goes to the most recently idle worker, so sessions
# started together tend to pile onto one warm worker (7 of 8 here), where
# strict calls wait even while the other worker is free. The bindings seen
# are printed.

Code.require_file("support/common.exs", __DIR__)

defmodule Bench.Sessions do
  import Bench.Common

  @pool :bench_sessions
  @adapter "snakepit_bench_stream_adapter.StreamBenchAdapter"

  def run do
    rounds = env_int("ROUNDS", 10)
    calls = env_int("CALLS", 2_000)

    IO.puts("# Snakepit session routing benchmark")
    IO.puts(machine_line("#{rounds} rounds, #{calls} calls per caller and round, 2 workers"))

    {:ok, _} =
      Snakepit.Pool.start_link(
        name: @pool,
        size: 2,
        adapter: @adapter,
        python_path: [Path.expand("support/python", __DIR__)]
      )

    :ok = Snakepit.await_ready(@pool, 60_000)

    candidates = [
      {"plain", :plain},
      {"strict, even", :strict_even},
      {"strict, first", :strict_first},
      {"hint, first", :hint_first}
    ]

    # Warm the paths up.
    for {_, kind} <- candidates, do: measure(kind, 2, 500)

    IO.puts("\n## Tiny call latency (µs), without and with a session_id\n")

    IO.puts(
      row(["callers", "candidate", "p50", "p99", "extra p50", "extra mean", "calls/s", "bindings"])
    )

    IO.puts(rule(8))

    for callers <- [1, 8] do
      samples = interleave(rounds, candidates, fn kind -> measure(kind, callers, calls) end)
      plain = Enum.reverse(samples["plain"])
      p = plain |> Enum.flat_map(& &1.latencies) |> Enum.sort()

      for {name, _} <- candidates do
        runs = Enum.reverse(samples[name])
        s = runs |> Enum.flat_map(& &1.latencies) |> Enum.sort()
        extra_mean = median(Enum.zip_with(runs, plain, &(&1.mean - &2.mean)))
        plain? = name == "plain"

        IO.puts(
          row([
            "#{callers}",
            name,
            us(pct(s, 50)),
            us(pct(s, 99)),
            if(plain?, do: "", else: signed(to_us(pct(s, 50) - pct(p, 50)))),
            if(plain?, do: "", else: signed(to_us(extra_mean))),
            "#{round(median(Enum.map(runs, & &1.rate)))}",
            if(plain?, do: "", else: runs |> Enum.map(&Enum.join(&1.spread, "/")) |> Enum.join(" "))
          ])
        )
      end
    end

    IO.puts("\nbindings: sessions per worker in each round, largest first.")

    IO.puts("\n## Routing overhead: plain and session calls alternated in each caller (µs)\n")

    IO.puts(
      row([
        "callers",
        "affinity",
        "pairs",
        "plain p50",
        "plain p99",
        "session p50",
        "session p99",
        "extra, median of pairs",
        "extra, mean of pairs"
      ])
    )

    IO.puts(rule(9))

    for callers <- [1, 8], affinity <- [:strict, :hint] do
      pairs = Enum.flat_map(1..rounds, fn _ -> alternated(callers, affinity, calls) end)
      p = pairs |> Enum.map(&elem(&1, 0)) |> Enum.sort()
      s = pairs |> Enum.map(&elem(&1, 1)) |> Enum.sort()
      diffs = pairs |> Enum.map(fn {plain, session} -> session - plain end) |> Enum.sort()

      IO.puts(
        row([
          "#{callers}",
          "#{affinity}",
          "#{length(pairs)}",
          us(pct(p, 50)),
          us(pct(p, 99)),
          us(pct(s, 50)),
          us(pct(s, 99)),
          signed(to_us(pct(diffs, 50))),
          signed(to_us(Enum.sum(diffs) / length(diffs)))
        ])
      )
    end

    IO.puts("\nload average after the run: #{loadavg()}")
  end

  # `callers` processes making `calls` calls each; their latencies (native
  # units), the mean, the calls/s, and (sessions) how they were bound.
  defp measure(kind, callers, calls) do
    ids = for _ <- 1..callers, do: if(kind != :plain, do: Snakepit.new_session_id())
    if kind == :strict_even, do: bind_evenly(ids)
    opts = if kind == :hint_first, do: [pool: @pool, affinity: :hint], else: [pool: @pool]
    t0 = System.monotonic_time()

    latencies =
      ids
      |> Enum.map(fn id -> Task.async(fn -> caller(id, opts, calls) end) end)
      |> Enum.flat_map(&Task.await(&1, 120_000))

    elapsed = System.monotonic_time() - t0
    spread = if kind != :plain, do: spread(ids), else: nil
    for id <- ids, id != nil, do: :ok = Snakepit.end_session(id, pool: @pool)

    %{
      latencies: latencies,
      mean: Enum.sum(latencies) / length(latencies),
      rate: length(latencies) / (to_us(elapsed) / 1_000_000),
      spread: spread
    }
  end

  # First calls two at a time, each holding a worker for 20 ms: one session
  # per worker in each pair.
  defp bind_evenly(ids) do
    for pair <- Enum.chunk_every(ids, 2) do
      pair
      |> Enum.map(fn id ->
        Task.async(fn ->
          {:ok, 20} = Snakepit.execute("sleep", %{ms: 20}, pool: @pool, session_id: id)
        end)
      end)
      |> Enum.each(&Task.await/1)
    end
  end

  # `callers` processes, each with its own session (bound evenly), making
  # `calls` pairs of a plain call and a session call; [{plain, session}].
  defp alternated(callers, affinity, calls) do
    ids = for _ <- 1..callers, do: Snakepit.new_session_id()
    bind_evenly(ids)

    pairs =
      ids
      |> Enum.map(fn id -> Task.async(fn -> alternating_caller(id, affinity, calls) end) end)
      |> Enum.flat_map(&Task.await(&1, 120_000))

    for id <- ids, do: :ok = Snakepit.end_session(id, pool: @pool)
    pairs
  end

  defp alternating_caller(id, affinity, calls) do
    plain = [pool: @pool]
    session = [pool: @pool, session_id: id, affinity: affinity]

    for i <- 1..calls do
      if rem(i, 2) == 0 do
        t_plain = timed_echo(plain)
        {t_plain, timed_echo(session)}
      else
        t_session = timed_echo(session)
        {timed_echo(plain), t_session}
      end
    end
  end

  defp timed_echo(opts) do
    t0 = System.monotonic_time()
    {:ok, 1} = Snakepit.execute("echo", %{value: 1}, opts)
    System.monotonic_time() - t0
  end

  defp caller(session_id, opts, calls) do
    opts = if session_id, do: [session_id: session_id] ++ opts, else: opts

    for _ <- 1..calls do
      t0 = System.monotonic_time()
      {:ok, 1} = Snakepit.execute("echo", %{value: 1}, opts)
      System.monotonic_time() - t0
    end
  end

  # How many of the sessions each worker holds, largest first.
  defp spread(ids) do
    sessions = Map.new(Snakepit.list_sessions(@pool), &{&1.session_id, &1.worker_id})

    ids
    |> Enum.frequencies_by(&Map.get(sessions, &1))
    |> Map.values()
    |> Enum.sort(:desc)
  end

  defp signed(x) when x >= 0, do: "+#{Float.round(x, 1)}"
  defp signed(x), do: "#{Float.round(x, 1)}"
end

Bench.Sessions.run()
