defmodule Snakepit.TimeoutsTest do
  # Timeouts, cancellation, dead callers and the bounded queue, against
  # real workers.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  test "a call that ignores its cancel is killed after the grace period; its answer never arrives" do
    pool = start_pool(size: 1, cancel_grace: 100)
    [old] = os_pids(pool)

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :timeout} = e} =
                 Snakepit.execute("sleep", %{ms: 5_000}, pool: pool, timeout: 100)

        assert e.details.queue == false
        wait_until(fn -> Snakepit.get_stats(pool).restarts == 1 end)
        assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
      end)

    assert log =~ "did not stop a cancelled call" or log =~ "cancel_grace"
    [new] = os_pids(pool)
    assert new != old
    refute os_alive?(old)
    refute_stray_answers()
    assert Snakepit.get_stats(pool).timeouts == 1
  end

  # until_cancelled logs a line.
  @tag :capture_log
  test "a tool that checks snakepit_bridge.cancelled() stops and its worker keeps serving" do
    pool = start_pool(size: 1, cancel_grace: 5_000)
    [pid] = os_pids(pool)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("until_cancelled", %{}, pool: pool, timeout: 100)

    # Served by the same process, well inside the grace period.
    assert {:ok, ^pid} = Snakepit.execute("pid", %{}, pool: pool, timeout: 2_000)
    assert Snakepit.get_stats(pool).restarts == 0
  end

  # spin logs a line.
  @tag :capture_log
  test "a pure-Python loop that never polls is stopped by its timeout, runs its finally, and its worker goes on" do
    pool = start_pool(size: 1, cancel_grace: 5_000)
    [pid] = os_pids(pool)
    finished = Path.join(System.tmp_dir!(), "snakepit_spin_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(finished) end)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("spin", %{finished: finished}, pool: pool, timeout: 200)

    # CallCancelled was raised in the loop: its finally ran, and the same
    # process serves the next call, well inside the grace period.
    assert {:ok, ^pid} = Snakepit.execute("pid", %{}, pool: pool, timeout: 2_000)
    assert File.exists?(finished)
    assert %{restarts: 0, timeouts: 1} = Snakepit.get_stats(pool)
  end

  @tag :capture_log
  test "an async tool stuck in await is cancelled by its timeout, and its worker goes on" do
    pool = start_pool(size: 1, cancel_grace: 5_000)
    [pid] = os_pids(pool)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("async_wait", %{seconds: 100}, pool: pool, timeout: 200)

    assert {:ok, ^pid} = Snakepit.execute("pid", %{}, pool: pool, timeout: 2_000)
    assert {:ok, "slept"} = Snakepit.execute("async_wait", %{seconds: 0}, pool: pool)
    assert Snakepit.get_stats(pool).restarts == 0
  end

  test ":queue_timeout bounds the wait for a worker, separately from :timeout" do
    pool = start_pool(size: 1)
    blocker = occupy(pool)

    assert {:error, %Error{category: :timeout} = e} =
             Snakepit.execute("echo", %{value: 1}, pool: pool, queue_timeout: 50, timeout: 5_000)

    assert e.details.queue and e.message =~ ":queue_timeout"
    blocker.release.()
    assert await_occupied(blocker) == [{:ok, "released"}]
    stats = Snakepit.get_stats(pool)
    assert stats.queue_timeouts == 1 and stats.queued == 0 and stats.timeouts == 0
  end

  test "a call that got its worker within :queue_timeout has the rest of its :timeout" do
    pool = start_pool(size: 1, queue_timeout: 50)
    assert {:ok, 200} = Snakepit.execute("sleep", %{ms: 200}, pool: pool, timeout: 5_000)
  end

  test "past :max_queue, calls fail at once with a :pool error" do
    pool = start_pool(size: 1, max_queue: 1, pipeline_depth: 1)
    blocker = occupy(pool)
    queued = Task.async(fn -> Snakepit.execute("echo", %{value: :queued}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)

    assert {:error, %Error{category: :pool} = e} =
             Snakepit.execute("echo", %{value: :refused}, pool: pool)

    assert e.message =~ "saturated" and e.details.limit == 1
    blocker.release.()
    assert await_occupied(blocker) == [{:ok, "released"}]
    assert {:ok, "queued"} = Task.await(queued)
    assert Snakepit.get_stats(pool).errors.pool == 1
  end

  test "a caller that dies while queued gives up its place" do
    pool = start_pool(size: 1, pipeline_depth: 1)
    blocker = occupy(pool)

    doomed = spawn(fn -> Snakepit.execute("count", %{}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)
    ref = Process.monitor(doomed)
    Process.exit(doomed, :kill)
    assert_receive {:DOWN, ^ref, _, _, _}
    wait_until(fn -> Snakepit.get_stats(pool).queued == 0 end)

    blocker.release.()
    assert await_occupied(blocker) == [{:ok, "released"}]
    # The dead caller's call never ran: this is the worker's first count.
    assert {:ok, 1} = Snakepit.execute("count", %{}, pool: pool)
    assert %{cancelled: 1, completed: 2} = Snakepit.get_stats(pool)
  end

  # until_cancelled logs a line.
  @tag :capture_log
  test "a caller that dies while its call runs frees the worker" do
    pool = start_pool(size: 1, cancel_grace: 5_000)
    [pid] = os_pids(pool)
    doomed = spawn(fn -> Snakepit.execute("until_cancelled", %{}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).busy == 1 end)
    Process.exit(doomed, :kill)

    assert {:ok, ^pid} = Snakepit.execute("pid", %{}, pool: pool, timeout: 2_000)
    assert Snakepit.get_stats(pool).cancelled == 1
  end

  test "a caller that dies while its call runs stuck gets its worker killed after the grace" do
    pool = start_pool(size: 1, cancel_grace: 100)
    [old] = os_pids(pool)

    started = Path.join(tmp_dir("sleep_started"), "started")

    capture_log(fn ->
      doomed =
        spawn(fn -> Snakepit.execute("sleep", %{ms: 10_000, started: started}, pool: pool) end)

      # Running in Python, not just written to its pipe: a cancel that
      # arrives before the call starts skips it, and nothing is killed.
      wait_until(fn -> File.exists?(started) end)
      Process.exit(doomed, :kill)
      wait_until(fn -> not os_alive?(old) end)
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
    end)
  end
end
