defmodule Snakepit.CommandTest do
  # Pools of `:command` workers: examples/node_worker/worker.js, a worker
  # written in JavaScript from docs/protocol.md alone, run by Node.js (which
  # scripts/bootstrap installs). Real processes, real pipes: what the host
  # does for Python workers (timeouts, cancel_grace kills, heartbeats,
  # crashes, restarts) it must do for these.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  @worker Path.expand("../../examples/node_worker/worker.js", __DIR__)

  setup_all do
    if System.find_executable("node") == nil,
      do: raise("these tests need Node.js (`node` on the PATH): run scripts/bootstrap")

    :ok
  end

  # A pool of the Node worker, under the test's supervisor. No shared
  # memory: the example worker cannot receive file descriptors.
  defp start_node_pool(extra \\ []) do
    name = :"command_pool_#{System.unique_integer([:positive])}"

    opts =
      Keyword.merge(
        [name: name, size: 1, command: ["node", @worker], shm_threshold: :infinity],
        extra
      )

    start_supervised!({Snakepit.Pool, opts})
    :ok = Snakepit.await_ready(name, 30_000)
    name
  end

  test "calls go to the program and come back, values intact" do
    pool = start_node_pool()

    args = %{
      "text" => "héllo",
      "bytes" => <<0, 255, 1>>,
      "ints" => [0, -1, 127, 128, -33, 65_536, -70_000, 2 ** 40, -(2 ** 62), 2 ** 64 - 1],
      "floats" => [1.5, -0.25],
      "nested" => %{"list" => [nil, true, false], "map" => %{}},
      # 64 KiB and more cross as blobs, outside the frame.
      "big_text" => String.duplicate("é", 40_000),
      "big_bytes" => :binary.copy(<<7, 200>>, 40_000)
    }

    assert {:ok, ^args} = Snakepit.execute("echo", args, pool: pool)
    assert {:ok, 3.5} = Snakepit.execute("add", %{a: 1, b: 2.5}, pool: pool)
    assert Snakepit.stream("echo", %{x: 1}, pool: pool) |> Enum.to_list() == [%{"x" => 1}]
  end

  test "a worker's error frames become the same errors as a Python worker's" do
    pool = start_node_pool()

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute("boom", %{message: "no luck"}, pool: pool)

    assert e.message == "Error: no luck"
    assert e.details.kind == "exception"
    assert e.details.tool == "boom"
    assert e.python_traceback =~ "worker.js"

    assert {:error, %Error{category: :validation, details: %{kind: "unknown_tool"}}} =
             Snakepit.execute("nope", %{}, pool: pool)

    assert {:error, %Error{category: :validation, details: %{kind: "bad_arguments"}}} =
             Snakepit.execute("add", %{a: 1}, pool: pool)

    assert {:ok, 2} = Snakepit.execute("add", %{a: 1, b: 1}, pool: pool)
    assert %{python_errors: 1, validation_errors: 2, restarts: 0} = Snakepit.get_stats(pool)
  end

  test "the program gets :env and the SNAKEPIT_ variables, and none of the bridge's" do
    pool = start_node_pool(env: %{"GREETING" => "hi"}, concurrency: 3)
    get = &Snakepit.execute!("env", %{name: &1}, pool: pool)

    assert get.("GREETING") == "hi"
    assert get.("SNAKEPIT_CONTROL_FD") == "3"
    assert get.("SNAKEPIT_CONCURRENCY") == "3"
    assert get.("SNAKEPIT_POOL") == to_string(pool)
    assert get.("SNAKEPIT_MAX_FRAME_BYTES") == "67108864"
    assert get.("SNAKEPIT_SHM_THRESHOLD") == "0"
    assert get.("PYTHONUNBUFFERED") == System.get_env("PYTHONUNBUFFERED")
    assert get.("PYTHONPATH") == System.get_env("PYTHONPATH")
  end

  test "a timed-out call is cancelled on the control pipe; the same worker goes on" do
    pool = start_node_pool(cancel_grace: 10_000)
    [pid] = os_pids(pool)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("sleep", %{ms: 60_000}, pool: pool, timeout: 100)

    # Answered by the same process long before cancel_grace: the cancel
    # reached the tool, which answered it.
    assert {:ok, 1} = Snakepit.execute("sleep", %{ms: 1}, pool: pool, timeout: 5_000)
    assert os_pids(pool) == [pid]
    assert %{timeouts: 1, restarts: 0} = Snakepit.get_stats(pool)
    refute_stray_answers()
  end

  test "a call deaf to its cancel is killed after :cancel_grace; the pool recovers" do
    pool = start_node_pool(cancel_grace: 100)
    [old] = os_pids(pool)

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :timeout}} =
                 Snakepit.execute("spin", %{ms: 60_000}, pool: pool, timeout: 100)

        wait_until(fn -> Snakepit.get_stats(pool).restarts == 1 end)
        assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
      end)

    assert log =~ "cancel_grace"
    assert [new] = os_pids(pool)
    assert new != old
    refute os_alive?(old)
    refute_stray_answers()
  end

  test "heartbeats are answered while a call waits, and missed while the program is stuck" do
    pool = start_node_pool(heartbeat_interval: 20, heartbeat_misses: 3, cancel_grace: 60_000)
    [old] = os_pids(pool)

    # 15 heartbeats come and are answered while the tool waits.
    assert {:ok, 300} = Snakepit.execute("sleep", %{ms: 300}, pool: pool)
    assert Snakepit.get_stats(pool).restarts == 0

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :worker} = e} =
                 Snakepit.execute("spin", %{ms: 60_000}, pool: pool)

        assert e.details.reason =~ "heartbeat"
        wait_until(fn -> match?([pid] when pid != old, os_pids(pool)) end)
      end)

    assert log =~ "missed 3 heartbeats"
    refute os_alive?(old)
  end

  test "a worker that exits fails its call with a :worker error and is replaced" do
    pool = start_node_pool()
    [old] = os_pids(pool)

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :worker} = e} =
                 Snakepit.execute("crash", %{status: 7}, pool: pool)

        assert e.details.status == 7
        wait_until(fn -> match?([pid] when pid != old, os_pids(pool)) end)
      end)

    assert log =~ "exited with status 7"
    assert {:ok, 2} = Snakepit.execute("add", %{a: 1, b: 1}, pool: pool)
    assert Snakepit.get_stats(pool).restarts == 1
  end

  test "with :concurrency, one worker runs several calls at once" do
    pool = start_node_pool(concurrency: 4)

    tasks =
      for _ <- 1..4,
          do: Task.async(fn -> Snakepit.execute("sleep", %{ms: 500}, pool: pool) end)

    wait_until(fn -> match?([%{running: 4}], Snakepit.list_workers(pool)) end)
    assert Enum.map(tasks, &Task.await/1) == List.duplicate({:ok, 500}, 4)
  end

  test "calls pipelined behind a long one are given back and served by another worker" do
    # Calls are written behind a running one until it has run
    # :reclaim_after ms: 1 s, for the time it takes to set this up.
    pool = start_node_pool(size: 2, pipeline_depth: 4, reclaim_after: 1_000)
    # One long call on each worker (idle workers are served first), then
    # six calls written behind them, three in each worker's pipe.
    slow = Task.async(fn -> Snakepit.execute("sleep", %{ms: 2_500}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).in_flight == 1 end)
    less_slow = Task.async(fn -> Snakepit.execute("sleep", %{ms: 1_200}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).in_flight == 2 end)
    quick = for i <- 1..6, do: Task.async(fn -> Snakepit.execute("sleep", %{ms: i}, pool: pool) end)
    wait_until(fn -> match?(%{in_flight: 8, queued: 0}, Snakepit.get_stats(pool)) end)

    # Once the 1.2 s call ends, the calls behind the 2.5 s one are taken
    # back for that worker: the Node worker gives them back (`reclaimed`).
    assert Enum.map(quick, &Task.await/1) == for(i <- 1..6, do: {:ok, i})
    assert Snakepit.get_stats(pool).requeued >= 1
    assert {:ok, 1_200} = Task.await(less_slow)
    assert {:ok, 2_500} = Task.await(slow)
    stats = Snakepit.get_stats(pool)
    assert %{restarts: 0, transport_errors: 0, worker_errors: 0} = stats
    assert_partition(stats)
  end

  test "a program that is missing, or exits before its handshake, stops the pool from starting" do
    Process.flag(:trap_exit, true)

    assert {:error, %Error{category: :validation} = e} =
             Snakepit.Pool.start_link(name: :command_missing, command: ["no-such-program-xyz"])

    assert e.message ==
             ~s(invalid pool option :command: "no-such-program-xyz" was not found on the PATH)

    assert e.details == %{option: :command}

    assert {:error, %Error{category: :validation, message: message}} =
             Snakepit.Pool.start_link(name: :command_script, command: [@worker <> ".nope"])

    assert message =~ "does not exist"

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :pool} = e} =
                 Snakepit.Pool.start_link(
                   name: :command_early_exit,
                   command: ["node", "-e", "console.error('no config here'); process.exit(3)"]
                 )

        assert e.message =~ "exited with status 3 before its handshake"
        assert e.message =~ "no config here"
      end)

    assert log =~ "no config here"
  end

  describe "mix snakepit.doctor" do
    alias Snakepit.Doctor

    defp check(checks, name), do: Enum.find(checks, &(&1.name == name))

    test "checks a :command pool's program and handshake, and no Python" do
      pools = [js: [command: ["node", @worker], shm_threshold: :infinity]]
      checks = Doctor.run(pools: pools, python: "/nonexistent/python3")

      refute Doctor.failed?(checks), inspect(Enum.filter(checks, &(&1.status == :error)))
      assert %{status: :ok, detail: "node is " <> _} = check(checks, "command")
      assert %{status: :ok, detail: detail} = check(checks, "handshake")
      assert detail =~ "pool :js: node #{@worker} runs and finishes its handshake"
      # --python concerns Python pools only.
      assert check(checks, "python") == nil
      assert check(checks, "adapter") == nil
    end

    test "a missing program fails with a fix; one that dies before its handshake too" do
      checks = Doctor.run(pools: [gone: [command: ["no-such-program-xyz", "w.js"]]])
      assert %{status: :error, detail: detail, hint: hint} = check(checks, "command")
      assert detail =~ "no-such-program-xyz was not found on the PATH"
      assert hint =~ "fix the :command of pool :gone"
      assert %{status: :skipped} = check(checks, "handshake")

      {checks, _log} =
        with_log(fn ->
          Doctor.run(pools: [dies: [command: ["node", "-e", "process.exit(3)"]]])
        end)

      assert %{status: :ok} = check(checks, "command")
      assert %{status: :error, detail: detail, hint: hint} = check(checks, "handshake")
      assert detail =~ "pool :dies could not start: worker exited with status 3"
      assert hint =~ "run it by hand"
    end
  end
end
