defmodule Snakepit.LifecycleTest do
  # Starting in batches, giving up on failing starts, and stopping without
  # leaving a process behind.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog
  import Snakepit.TestPools
  import Bitwise

  alias Snakepit.Error

  defp tmp_path(name) do
    path = Path.join(System.tmp_dir!(), "snakepit_#{name}_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  test "workers start :startup_batch_size at a time" do
    log = tmp_path("starts")
    opts = opts(size: 4, startup_batch_size: 2, env: %{"SNAKEPIT_TEST_START_LOG" => log})
    start_supervised!({Snakepit.Pool, opts})
    assert :ok = Snakepit.await_ready(opts[:name], 10_000)

    spans =
      for line <- File.read!(log) |> String.split("\n", trim: true) do
        [started, done] = line |> String.split() |> Enum.map(&String.to_float/1)
        {started, done}
      end

    assert length(spans) == 4
    # At no moment were more than two adapters starting.
    for {t, _} <- spans do
      assert Enum.count(spans, fn {s, d} -> s <= t and t < d end) <= 2
    end
  end

  test "a worker that keeps failing to start stops the pool after :max_start_failures" do
    fail_if = tmp_path("fail")

    opts = opts(size: 1, max_start_failures: 2, env: %{"SNAKEPIT_TEST_FAIL_IF" => fail_if})

    {:ok, pid} = Snakepit.Pool.start_link(opts)
    Process.unlink(pid)
    ref = Process.monitor(pid)
    File.write!(fail_if, "")

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :worker}} =
                 Snakepit.execute("exit_now", %{code: 1}, pool: opts[:name])

        assert_receive {:DOWN, ^ref, :process, ^pid, {:shutdown, %Error{} = error}}, 10_000
        send(self(), {:error, error})
      end)

    assert_received {:error, error}
    assert error.message =~ "failed to start 2 times in a row (:max_start_failures)"
    assert error.message =~ "exists"
    assert log =~ "max_start_failures"
  end

  test "workers still busy at a stop get SIGTERM, then SIGKILL if they ignore it; their descendants die" do
    opts = opts(size: 2, shutdown_timeout: 200)
    {:ok, pool_pid} = Snakepit.Pool.start_link(opts)
    pool = opts[:name]
    :ok = Snakepit.await_ready(pool, 10_000)
    workers = os_pids(pool)
    # Whichever worker runs these, each holds two descendants.
    children =
      for _ <- 1..2,
          do: Task.async(fn -> Snakepit.execute!("spawn_children", %{}, pool: pool) end)

    children = Enum.flat_map(children, &Task.await(&1, 10_000))
    Enum.each(children, &assert(os_alive?(&1)))
    # One worker ignores SIGTERM; both are busy past the shutdown timeout.
    assert {:ok, true} = Snakepit.execute("ignore_sigterm", %{}, pool: pool)
    assert [stubborn] = Enum.filter(workers, &ignores_sigterm?/1)
    [other] = workers -- [stubborn]
    busy = occupy(pool, 2)

    Process.unlink(pool_pid)
    ref = Process.monitor(pool_pid)
    capture_log(fn -> GenServer.stop(pool_pid, :shutdown) end)
    assert_receive {:DOWN, ^ref, _, _, _}

    # SIGTERM ended the one, SIGKILL the one that ignored it.
    signals =
      for answer <- await_occupied(busy), into: %{} do
        assert {:error, %Error{category: :worker, details: details}} = answer
        {details.os_pid, details.signal}
      end

    assert signals == %{other => 15, stubborn => 9}
    for pid <- workers ++ children, do: wait_until(fn -> not os_alive?(pid) end)
  end

  test "a graceful stop lets a running call finish within :shutdown_timeout" do
    opts = opts(size: 1, shutdown_timeout: 5_000)
    {:ok, pool_pid} = Snakepit.Pool.start_link(opts)
    pool = opts[:name]
    running = Task.async(fn -> Snakepit.execute("sleep", %{ms: 300}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).busy == 1 end)
    Process.unlink(pool_pid)
    GenServer.stop(pool_pid, :shutdown)
    assert {:ok, 300} = Task.await(running)
  end

  defp ignores_sigterm?(os_pid) do
    [mask] =
      Regex.run(~r/^SigIgn:\s*([0-9a-f]+)$/m, File.read!("/proc/#{os_pid}/status"),
        capture: :all_but_first
      )

    sigterm = 1 <<< (15 - 1)
    (String.to_integer(mask, 16) &&& sigterm) != 0
  end
end
