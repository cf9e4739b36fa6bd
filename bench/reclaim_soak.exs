# Reclaim under pressure: 64 callers on 2 workers at pipeline_depth 4 with
# reclaim_after: 1 ms, so calls are asked back all the time, while a busy
# machine holds up the workers' control threads. Every call must get its own
# answer; a worker that breaks the protocol is killed and shows up as a
# restart and as "bad" calls.
#
#   mix run bench/reclaim_soak.exs            (MS=15000 by default)
#
# It found a late `reclaim` giving back a call answered long before (2 runs
# in 4 failed before the fix in 6f2482b; 0 in 4 after, ~1.2M calls each).
# Not a test: it needs load and luck to hit a race, so it reports.

defmodule Bench.ReclaimSoak do
  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    ms = String.to_integer(System.get_env("MS", "15000"))

    {:ok, _} =
      Snakepit.Pool.start_link(
        name: :reclaim_soak,
        size: 2,
        adapter: @adapter,
        pipeline_depth: 4,
        reclaim_after: 1
      )

    :ok = Snakepit.await_ready(:reclaim_soak, 30_000)
    counts = :counters.new(2, [])
    deadline = System.monotonic_time(:millisecond) + ms

    1..64
    |> Enum.map(fn i -> Task.async(fn -> loop(i, deadline, counts) end) end)
    |> Enum.each(&Task.await(&1, ms + 60_000))

    stats = Snakepit.get_stats(:reclaim_soak)

    IO.puts(
      "ok #{:counters.get(counts, 1)} bad #{:counters.get(counts, 2)} " <>
        "requeued #{stats.requeued} restarts #{stats.restarts}"
    )
  end

  defp loop(i, deadline, counts) do
    if System.monotonic_time(:millisecond) < deadline do
      case Snakepit.execute("echo", %{"value" => i}, pool: :reclaim_soak) do
        {:ok, ^i} ->
          :counters.add(counts, 1, 1)

        other ->
          :counters.add(counts, 2, 1)
          IO.inspect(other, label: "bad answer")
      end

      loop(i, deadline, counts)
    end
  end
end

Bench.ReclaimSoak.run()
