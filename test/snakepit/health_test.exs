defmodule Snakepit.HealthTest do
  # Heartbeats and recycling, against real workers.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  describe "heartbeats" do
    test "a frozen worker misses heartbeats and is replaced" do
      pool = start_pool(size: 1, heartbeat_interval: 50, heartbeat_misses: 2)
      [old] = os_pids(pool)

      log =
        capture_log(fn ->
          System.cmd("kill", ["-STOP", "#{old}"])
          wait_until(fn -> Snakepit.get_stats(pool).restarts == 1 end)
          assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
        end)

      assert log =~ "missed 2 heartbeats"
      refute os_alive?(old)
    end

    test "a call stuck in C code holding the GIL is ended by heartbeats, with a :worker error" do
      pool = start_pool(size: 1, heartbeat_interval: 50, heartbeat_misses: 3)

      capture_log(fn ->
        assert {:error, %Error{category: :worker} = e} =
                 Snakepit.execute("hog_gil", %{}, pool: pool)

        assert e.message =~ "missed 3 heartbeats" and e.details.signal == 9
        assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
      end)
    end

    test "a busy worker running Python code still answers heartbeats" do
      # 400 ms is 20 heartbeats; a worker that answered none while busy would
      # be killed after 5. The slack is for a loaded 2-vCPU machine.
      pool = start_pool(size: 1, heartbeat_interval: 20, heartbeat_misses: 5)
      assert {:ok, 400} = Snakepit.execute("sleep", %{ms: 400}, pool: pool)
      assert Snakepit.get_stats(pool).restarts == 0
    end
  end

  describe "recycling" do
    test ":max_requests recycles a worker after that many calls, dropping none" do
      pool = start_pool(size: 1, max_requests: 3)
      [first] = os_pids(pool)
      results = for i <- 1..10, do: Snakepit.execute("echo", %{value: i}, pool: pool)
      assert results == Enum.map(1..10, &{:ok, &1})
      stats = Snakepit.get_stats(pool)
      assert stats.recycles == 3 and stats.restarts == 0
      refute first in os_pids(pool)
    end

    test "a worker recycled with a call in flight finishes it first" do
      pool = start_pool(size: 1, max_requests: 1, pipeline_depth: 4, reclaim_after: :infinity)
      [old] = os_pids(pool)
      running = occupy(pool)
      behind = for _ <- 1..3, do: Task.async(fn -> Snakepit.execute("pid", %{}, pool: pool) end)
      wait_until(fn -> Snakepit.get_stats(pool).in_flight == 4 end)
      # Its first answer retires it, with three calls written behind it:
      # it answers those itself, none is queued again.
      running.release.()
      assert await_occupied(running) == [{:ok, "released"}]
      assert Enum.map(behind, &Task.await/1) == [ok: old, ok: old, ok: old]
      wait_until(fn -> Snakepit.get_stats(pool).recycles == 1 end)
      assert %{requeued: 0, restarts: 0, completed: 4} = Snakepit.get_stats(pool)
      refute old in os_pids(pool)
    end

    test ":max_age recycles workers one at a time, while calls keep succeeding" do
      pool = start_pool(size: 2, max_age: 300)
      first = os_pids(pool)

      Stream.repeatedly(fn ->
        assert Snakepit.execute("echo", %{value: 1}, pool: pool) == {:ok, 1}
        stats = Snakepit.get_stats(pool)
        # Sampled between calls: never two workers out of service at once.
        assert stats.starting + stats.stopping <= 1, inspect(stats)
        stats
      end)
      |> Enum.find(&(&1.recycles >= 2))

      assert Snakepit.get_stats(pool).restarts == 0
      wait_until(fn -> Enum.all?(os_pids(pool), &(&1 not in first)) end, 10_000)
    end

    test ":max_memory_mb recycles a worker whose resident memory passed it" do
      pool = start_pool(size: 1, max_memory_mb: 80)
      [old] = os_pids(pool)
      [%{rss_bytes: rss}] = Snakepit.list_workers(pool)
      assert is_integer(rss) and rss < 80 * 1024 * 1024
      assert {:ok, 100} = Snakepit.execute("grow", %{mb: 100}, pool: pool)
      wait_until(fn -> Snakepit.get_stats(pool).recycles == 1 end)
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
      refute old in os_pids(pool)
    end
  end
end
