defmodule Snakepit.ConcurrencyTest do
  # Workers that run several calls at once (`concurrency: N`): threads for
  # plain tools, one asyncio loop for async ones, out-of-order answers,
  # cancellation of one call among several, sessions kept in order, and a
  # worker death that fails every call it ran.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  defp at_once(pool, n, tool, args, opts \\ []) do
    1..n
    |> Enum.map(fn _ ->
      Task.async(fn -> Snakepit.execute(tool, args, [pool: pool, timeout: 10_000] ++ opts) end)
    end)
    |> Task.await_many(15_000)
    |> Enum.map(fn {:ok, result} -> result end)
  end

  # The calls overlapped: the latest start came before the earliest end.
  defp assert_overlap(results) do
    latest_start = results |> Enum.map(& &1["start"]) |> Enum.max()
    earliest_end = results |> Enum.map(& &1["end"]) |> Enum.min()
    assert latest_start < earliest_end, "the calls ran one after another: #{inspect(results)}"
  end

  test "one worker with concurrency 8 runs 8 blocking calls at once, on threads" do
    pool = start_pool(size: 1, concurrency: 8)
    results = at_once(pool, 8, "nap", %{seconds: 0.3})
    assert_overlap(results)
    assert results |> Enum.map(& &1["pid"]) |> Enum.uniq() |> length() == 1
    assert results |> Enum.map(& &1["thread"]) |> Enum.uniq() |> length() == 8
  end

  test "one worker with concurrency 8 runs 8 async calls at once, on one event loop" do
    pool = start_pool(size: 1, concurrency: 8)
    results = at_once(pool, 8, "async_nap", %{seconds: 0.3})
    assert_overlap(results)
    assert results |> Enum.map(& &1["thread"]) |> Enum.uniq() |> length() == 1
  end

  test "plain and async tools of one adapter run at once" do
    pool = start_pool(size: 1, concurrency: 4)

    tasks =
      for tool <- ["nap", "async_nap", "nap", "async_nap"] do
        Task.async(fn -> Snakepit.execute(tool, %{seconds: 0.3}, pool: pool) end)
      end

    results = tasks |> Task.await_many(10_000) |> Enum.map(fn {:ok, r} -> r end)
    assert_overlap(results)
  end

  test "a worker holds as many calls as it runs, plus what waits in its pipe; the rest queue" do
    pool = start_pool(size: 1, concurrency: 3, pipeline_depth: 2)

    tasks =
      for _ <- 1..6, do: Task.async(fn -> Snakepit.execute("nap", %{seconds: 0.4}, pool: pool) end)

    wait_until(fn -> match?([%{running: 3, in_flight: 4}], Snakepit.list_workers(pool)) end)
    assert Snakepit.get_stats(pool).queued == 2
    assert Enum.all?(Task.await_many(tasks, 10_000), &match?({:ok, _}, &1))
    assert [%{running: 0, in_flight: 0, state: :idle}] = Snakepit.list_workers(pool)
  end

  # spin logs a line.
  @tag :capture_log
  test "a timeout stops the one call it ends; the others on the worker go on" do
    pool = start_pool(size: 1, concurrency: 4, cancel_grace: 5_000)
    [pid] = os_pids(pool)
    finished = Path.join(System.tmp_dir!(), "snakepit_cspin_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(finished) end)

    naps =
      for _ <- 1..2, do: Task.async(fn -> Snakepit.execute("nap", %{seconds: 0.5}, pool: pool) end)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("spin", %{finished: finished}, pool: pool, timeout: 200)

    assert [{:ok, %{"pid" => ^pid}}, {:ok, %{"pid" => ^pid}}] = Task.await_many(naps, 5_000)
    assert {:ok, ^pid} = Snakepit.execute("pid", %{}, pool: pool, timeout: 2_000)
    assert File.exists?(finished)
    assert Snakepit.get_stats(pool).restarts == 0
    refute_stray_answers()
  end

  test "an async call that times out is cancelled in its await; the loop serves the next" do
    pool = start_pool(size: 1, concurrency: 4, cancel_grace: 5_000)
    [pid] = os_pids(pool)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("async_nap", %{seconds: 60}, pool: pool, timeout: 200)

    assert {:ok, %{"pid" => ^pid}} = Snakepit.execute("async_nap", %{seconds: 0}, pool: pool)
    assert Snakepit.get_stats(pool).restarts == 0
  end

  test "the calls of one session run one after another, and lose no update" do
    pool = start_pool(size: 1, concurrency: 4)

    tasks =
      for i <- 1..4 do
        Task.async(fn ->
          Snakepit.execute_in_session("s1", "session_append", %{item: i, seconds: 0.05}, pool: pool)
        end)
      end

    results = tasks |> Task.await_many(10_000) |> Enum.map(fn {:ok, items} -> items end)
    longest = Enum.max_by(results, &length/1)
    assert Enum.sort(longest) == [1, 2, 3, 4]
    assert results |> Enum.map(&length/1) |> Enum.sort() == [1, 2, 3, 4]
  end

  test "calls of different sessions run at once on one worker" do
    pool = start_pool(size: 1, concurrency: 4)

    tasks =
      for i <- 1..4 do
        Task.async(fn ->
          Snakepit.execute_in_session("s#{i}", "nap", %{seconds: 0.3}, pool: pool)
        end)
      end

    results = tasks |> Task.await_many(10_000) |> Enum.map(fn {:ok, r} -> r end)
    assert_overlap(results)
  end

  @tag :capture_log
  test "a worker that dies fails every call it was running, each once" do
    pool = start_pool(size: 1, concurrency: 4)
    [pid] = os_pids(pool)
    started = Path.join(System.tmp_dir!(), "snakepit_cdie_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(started) end)

    tasks =
      for _ <- 1..3 do
        Task.async(fn -> Snakepit.execute("nap", %{seconds: 30}, pool: pool, timeout: 20_000) end)
      end

    wait_until(fn -> match?([%{running: 3}], Snakepit.list_workers(pool)) end)
    System.cmd("kill", ["-KILL", Integer.to_string(pid)])

    for result <- Task.await_many(tasks, 10_000) do
      assert {:error, %Error{category: :worker}} = result
    end

    assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
    refute_stray_answers()
  end

  @tag :capture_log
  test "a tool that raises SystemExit ends its worker, as with concurrency 1" do
    for concurrency <- [1, 4] do
      pool = start_pool(size: 1, concurrency: concurrency)

      assert {:error, %Error{category: :worker} = e} =
               Snakepit.execute("sys_exit", %{code: 9}, pool: pool)

      assert e.details.status == 9, inspect(e)
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 10_000)
    end
  end

  test "streams run at once, each within its credits" do
    pool = start_pool(size: 1, concurrency: 4, stream_window: 2)

    tasks =
      for _ <- 1..3 do
        Task.async(fn ->
          Snakepit.stream("count_up", %{n: 20, delay: 0.005}, pool: pool) |> Enum.to_list()
        end)
      end

    for items <- Task.await_many(tasks, 10_000), do: assert(items == Enum.to_list(0..19))
  end

  test "a worker busy with all its slots still answers heartbeats" do
    # 1 s is 20 heartbeats; a worker that answered none while busy would be
    # killed after 5 (250 ms). The slack is for a loaded 2-vCPU machine: 20 ms
    # heartbeats with 5 misses once failed here while the whole suite ran.
    pool = start_pool(size: 1, concurrency: 4, heartbeat_interval: 50, heartbeat_misses: 5)
    results = at_once(pool, 4, "nap", %{seconds: 1.0})
    assert_overlap(results)
    assert Snakepit.get_stats(pool).restarts == 0
  end

  test ":max_requests recycles a concurrent worker once its running calls are answered" do
    pool = start_pool(size: 1, concurrency: 4, max_requests: 3)
    [first] = os_pids(pool)
    results = at_once(pool, 12, "nap", %{seconds: 0.05})
    assert length(results) == 12
    wait_until(fn -> Snakepit.get_stats(pool).recycles >= 1 end)
    stats = Snakepit.get_stats(pool)
    assert stats.restarts == 0 and stats.completed == 12
    refute first in os_pids(pool)
  end

  test "counters partition the calls of a concurrent worker" do
    pool = start_pool(size: 2, concurrency: 4)

    tasks =
      for i <- 1..40 do
        Task.async(fn ->
          case rem(i, 4) do
            0 -> Snakepit.execute("boom", %{}, pool: pool)
            1 -> Snakepit.execute("nap", %{seconds: 1}, pool: pool, timeout: 50)
            _ -> Snakepit.execute("nap", %{seconds: 0.01}, pool: pool)
          end
        end)
      end

    Task.await_many(tasks, 20_000)
    wait_until(fn -> Snakepit.get_stats(pool).in_flight == 0 end)
    stats = Snakepit.get_stats(pool)
    assert stats.requests == 40
    assert stats.completed + stats.python_errors + stats.timeouts == 40
    assert stats.timeouts == 10
  end
end
