defmodule Snakepit.PipelineTest do
  # pipeline_depth > 1: calls written to a busy worker's pipe ahead of time.
  # Tests that write calls behind a long-running one set reclaim_after:
  # :infinity, or the running call would stall its worker after 50 ms and
  # later calls would queue instead (see the reclaim tests).
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog
  import Snakepit.TestPools, only: [wait_until: 1, start_pool: 1]

  alias Snakepit.{Error, TestPools}

  defp call_async(pool, tool, args, opts \\ []) do
    Task.async(fn -> Snakepit.execute(tool, args, [pool: pool] ++ opts) end)
  end

  test "up to pipeline_depth calls are written to a worker, the rest wait in the queue" do
    pool = start_pool(size: 1, pipeline_depth: 3, reclaim_after: :infinity)
    first = TestPools.occupy(pool)
    more = for i <- 1..3, do: call_async(pool, "echo", %{value: i})
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)

    assert %{in_flight: 3, queued: 1, busy: 1} = Snakepit.get_stats(pool)
    assert [%{in_flight: 3}] = Snakepit.list_workers(pool)
    first.release.()
    assert TestPools.await_occupied(first) == [{:ok, "released"}]
    assert Enum.map(more, &Task.await/1) == [ok: 1, ok: 2, ok: 3]
  end

  test "many callers each get their own answer with pipelining" do
    pool = start_pool(size: 2, pipeline_depth: 4)

    1..400
    |> Task.async_stream(
      fn i -> {i, Snakepit.execute("echo", %{value: [i, "#{i}"]}, pool: pool)} end,
      max_concurrency: 32,
      timeout: 30_000
    )
    |> Enum.each(fn {:ok, {i, answer}} -> assert answer == {:ok, [i, "#{i}"]} end)

    assert %{in_flight: 0, queued: 0, completed: 400} = Snakepit.get_stats(pool)
  end

  test "calls written behind a call whose worker dies are queued again, not failed" do
    pool = start_pool(size: 1, pipeline_depth: 3, reclaim_after: :infinity)
    [os_pid] = TestPools.os_pids(pool)

    capture_log(fn ->
      doomed = TestPools.occupy(pool)
      behind = for i <- 1..2, do: call_async(pool, "echo", %{value: i})
      wait_until(fn -> Snakepit.get_stats(pool).in_flight == 3 end)
      # Killed only once both are written behind the running call.
      {_, 0} = System.cmd("kill", ["-KILL", "#{os_pid}"])

      assert [{:error, %Error{category: :worker}}] = TestPools.await_occupied(doomed)
      assert Enum.map(behind, &Task.await(&1, 10_000)) == [ok: 1, ok: 2]
    end)

    assert %{requeued: 2, worker_errors: 1} = Snakepit.get_stats(pool)
  end

  test "a call cancelled while waiting in a worker's pipe never answers its caller" do
    pool = start_pool(size: 1, pipeline_depth: 2, reclaim_after: :infinity)
    running = TestPools.occupy(pool)

    assert {:error, %Error{category: :timeout} = e} =
             Snakepit.execute("echo", %{value: :late}, pool: pool, timeout: 50)

    # It had been written to the worker, not left in the queue.
    assert e.details.queue == false
    running.release.()
    assert TestPools.await_occupied(running) == [{:ok, "released"}]
    # The worker answered the cancelled call (ran it, or skipped it if the
    # cancel came first) before the next one: three answers, the middle one
    # dropped.
    assert Snakepit.execute("echo", %{value: :next}, pool: pool) == {:ok, "next"}
    assert TestPools.served(pool) == 3
    TestPools.refute_stray_answers()
    # It counts once, as a timeout: not as completed too, nor as cancelled
    # (that is for callers that died).
    assert %{in_flight: 0, timeouts: 1, completed: 2, cancelled: 0} = Snakepit.get_stats(pool)
  end

  test "quick calls written behind a slow one are taken back and served by another worker" do
    # A call behind a stalled one is asked back within 1.5 x :reclaim_after
    # (450 ms here). 300 ms rather than the default 50 leaves a loaded
    # machine the time to write some of the quick calls behind the slow one
    # before it stalls; without reclaim those wait for it (3 s).
    pool = start_pool(size: 2, pipeline_depth: 4, reclaim_after: 300)
    slow = call_async(pool, "sleep", %{ms: 3_000})
    wait_until(fn -> Snakepit.get_stats(pool).busy == 1 end)
    started = System.monotonic_time(:millisecond)

    waits =
      1..50
      |> Task.async_stream(
        fn i ->
          t0 = System.monotonic_time(:millisecond)
          assert Snakepit.execute("echo", %{value: i}, pool: pool) == {:ok, i}
          System.monotonic_time(:millisecond) - t0
        end,
        max_concurrency: 50,
        timeout: 10_000
      )
      |> Enum.map(fn {:ok, ms} -> ms end)

    # All answered long before the slow call ends: none waited for it.
    assert Enum.max(waits) < 2_000, "waits: #{inspect(Enum.sort(waits))}"
    assert System.monotonic_time(:millisecond) - started < 2_500
    assert Task.await(slow, 10_000) == {:ok, 3_000}
    # Some had been written behind the slow call and were given back.
    assert %{requeued: requeued, completed: 51} = Snakepit.get_stats(pool)
    assert requeued > 0
  end

  test "a call whose queue_timeout passes in a worker's pipe is taken back and fails so" do
    pool = start_pool(size: 1, pipeline_depth: 2, reclaim_after: :infinity)
    running = TestPools.occupy(pool)

    assert {:error, %Error{category: :timeout} = e} =
             Snakepit.execute("count", %{}, pool: pool, queue_timeout: 50, timeout: 5_000)

    assert e.details.queue == true
    assert e.message =~ ":queue_timeout"
    running.release.()
    assert TestPools.await_occupied(running) == [{:ok, "released"}]
    # It never ran: this is the worker's first count.
    assert {:ok, 1} = Snakepit.execute("count", %{}, pool: pool)
    assert %{queue_timeouts: 1, requeued: 0, in_flight: 0} = Snakepit.get_stats(pool)
    TestPools.refute_stray_answers()
  end

  test "with reclaim_after: :infinity calls written behind a slow one wait for it" do
    pool = start_pool(size: 2, pipeline_depth: 2, reclaim_after: :infinity)
    # Both workers busy, so the next call is written behind a running one.
    running = TestPools.occupy(pool, 2)
    behind = call_async(pool, "echo", %{value: 1})
    wait_until(fn -> Snakepit.get_stats(pool).in_flight == 3 end)
    refute Task.yield(behind, 200)
    running.release.()
    assert TestPools.await_occupied(running) == [ok: "released", ok: "released"]
    assert Task.await(behind) == {:ok, 1}
    assert %{requeued: 0} = Snakepit.get_stats(pool)
  end

  test "pipeline_depth is validated" do
    for bad <- [0, 65, 1.5, :many] do
      assert {:error, %Error{details: %{option: :pipeline_depth}}} =
               Snakepit.Pool.start_link(TestPools.opts(pipeline_depth: bad))
    end
  end
end
