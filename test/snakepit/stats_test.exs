defmodule Snakepit.StatsTest do
  # The outcome counters of `Snakepit.get_stats/1` partition the requests:
  # each call is counted once, under what became of it.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  @outcomes [
    :completed,
    :python_errors,
    :validation_errors,
    :worker_errors,
    :transport_errors,
    :timeouts,
    :queue_timeouts,
    :cancelled,
    :rejected,
    :stopped
  ]

  test "a mixed run counts each call once, under its own outcome" do
    pool = start_pool(size: 1, max_queue: 1, cancel_grace: 5_000, pipeline_depth: 1)
    run = &Snakepit.execute(&1, &2, Keyword.put(&3, :pool, pool))

    for i <- 1..3, do: assert({:ok, ^i} = run.("echo", %{value: i}, []))
    for _ <- 1..2, do: assert({:error, %Error{category: :python_error}} = run.("boom", %{}, []))
    assert {:error, %Error{category: :validation}} = run.("no_such_tool", %{}, [])
    assert {:error, %Error{category: :validation}} = run.("echo", %{bogus: 1}, [])
    assert {:error, %Error{category: :validation}} = run.("echo", %{value: self()}, [])

    # Times out while running; the worker's late answer must not count again.
    assert {:error, %Error{category: :timeout}} = run.("sleep", %{ms: 300}, timeout: 50)
    # Runs after the sleep, then the worker dies under it.
    assert {:error, %Error{category: :worker}} = run.("exit_now", %{}, [])
    :ok = Snakepit.await_ready(pool, 30_000)

    {gate, release} = gate()
    blocker = Task.async(fn -> run.("block_until", %{path: gate}, []) end)
    wait_until(fn -> Snakepit.get_stats(pool).in_flight == 1 end)

    assert {:error, %Error{category: :timeout, details: %{queue: true}}} =
             run.("echo", %{value: :late}, queue_timeout: 50)

    victim = spawn(fn -> run.("echo", %{value: :orphan}, []) end)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)
    Process.exit(victim, :kill)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 0 end)

    queued = Task.async(fn -> run.("echo", %{value: :queued}, []) end)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)
    assert {:error, %Error{category: :pool}} = run.("echo", %{value: :rejected}, [])

    release.()
    assert Task.await(blocker) == {:ok, "released"}
    assert Task.await(queued) == {:ok, "queued"}
    wait_until(fn -> quiet?(pool) end)

    stats = Snakepit.get_stats(pool)

    assert Map.take(stats, @outcomes) == %{
             completed: 5,
             python_errors: 2,
             validation_errors: 3,
             worker_errors: 1,
             transport_errors: 0,
             timeouts: 1,
             queue_timeouts: 1,
             cancelled: 1,
             rejected: 1,
             stopped: 0
           }

    assert stats.requests == 15
    assert_partition(stats)
    assert stats.restarts == 1

    assert stats.errors == %{
             python_error: 2,
             python: 2,
             validation: 3,
             worker: 1,
             transport: 0,
             timeout: 2,
             pool: 1
           }

    # Keyed by category (Snakepit.Error.category/0): every key but the
    # deprecated :python is one.
    categories = [:worker, :timeout, :python_error, :validation, :pool, :transport]
    assert Enum.sort(Map.keys(stats.errors) -- [:python]) == Enum.sort(categories)
  end

  test "with pipelining, answers to timed-out calls are not counted again" do
    # 2 ok and 2 timeouts were once reported as 3 completed and 1 Python error.
    pool = start_pool(size: 1, pipeline_depth: 2, cancel_grace: 5_000, reclaim_after: :infinity)
    run = &Snakepit.execute(&1, &2, Keyword.put(&3, :pool, pool))

    # The first call holds the worker in native code (time.sleep), where
    # its cancel cannot stop it, for long enough that both calls time out
    # however late a loaded machine runs this test (a 200 ms sleep once
    # ended before the second call's 50 ms had, and that call answered).
    slow = Task.async(fn -> run.("sleep", %{ms: 2_000}, timeout: 50) end)
    wait_until(fn -> Snakepit.get_stats(pool).in_flight == 1 end)
    assert {:error, %Error{category: :timeout}} = run.("boom", %{}, timeout: 50)
    assert {:error, %Error{category: :timeout}} = Task.await(slow)
    assert {:ok, 1} = run.("echo", %{value: 1}, [])
    assert {:ok, 2} = run.("echo", %{value: 2}, [])
    wait_until(fn -> quiet?(pool) end)

    assert %{completed: 2, timeouts: 2, python_errors: 0, requests: 4} =
             stats = Snakepit.get_stats(pool)

    assert_partition(stats)
  end

  test "calls refused before reaching the pool are not counted" do
    pool = start_pool(size: 1)
    before = Snakepit.get_stats(pool)
    assert {:error, %Error{category: :validation}} = Snakepit.execute(42, %{}, pool: pool)
    assert {:error, %Error{category: :validation}} = Snakepit.execute("echo", :nope, pool: pool)
    assert Snakepit.get_stats(pool).requests == before.requests
  end

  defp quiet?(pool) do
    stats = Snakepit.get_stats(pool)
    stats.queued == 0 and stats.in_flight == 0 and stats.busy == 0
  end
end
