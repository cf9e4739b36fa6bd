defmodule Snakepit.PoolTest do
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias Snakepit.{Error, TestPools}

  import Snakepit.TestPools, only: [wait_until: 1, os_pids: 1]

  describe "options" do
    test "invalid options are refused with an error naming the option" do
      assert {:error, %Error{category: :validation} = e} =
               Snakepit.Pool.start_link(TestPools.opts(size: 0))

      assert e.message == "invalid pool option :size: expected a positive integer, got: 0"
      assert e.details.option == :size

      assert {:error, %Error{message: "missing required pool option :adapter"}} =
               Snakepit.Pool.start_link(name: :x)

      assert {:error, %Error{message: "unknown pool option :sise" <> _}} =
               Snakepit.Pool.start_link(TestPools.opts(sise: 2))

      assert {:error, %Error{details: %{option: :adapter}}} =
               Snakepit.Pool.start_link(TestPools.opts(adapter: "not a path"))

      assert {:error, %Error{details: %{option: :max_frame_bytes}}} =
               Snakepit.Pool.start_link(TestPools.opts(max_frame_bytes: 2 ** 40))

      assert {:error, %Error{details: %{option: :env}}} =
               Snakepit.Pool.start_link(TestPools.opts(env: [{"A", 1.5}]))
    end

    test "the robustness options take their documented forms" do
      for {key, bad, expected} <- [
            {:queue_timeout, 0, "a positive integer or :infinity"},
            {:max_requests, :never, "a positive integer or :infinity"},
            {:max_age, -1, "a positive integer or :infinity"},
            {:max_memory_mb, "1G", "a positive integer or :infinity"},
            {:heartbeat_interval, nil, "a positive integer or :infinity"},
            {:heartbeat_misses, 0, "a positive integer"},
            {:max_queue, :infinity, "a positive integer"},
            {:startup_batch_size, 0, "a positive integer"},
            {:max_start_failures, 1.5, "a positive integer"},
            {:cancel_grace, -5, "a non-negative integer (milliseconds)"},
            {:shutdown_timeout, :infinity, "a non-negative integer (milliseconds)"}
          ] do
        assert {:error, %Error{details: %{option: ^key}} = e} =
                 Snakepit.Config.validate(TestPools.opts([{key, bad}]))

        assert e.message =~ "expected #{expected}"
      end

      {:ok, config} = Snakepit.Config.validate(TestPools.opts(max_age: :infinity, cancel_grace: 0))
      assert {config.max_age, config.cancel_grace, config.max_queue} == {:infinity, 0, 10_000}
    end

    test "a python that does not exist is named in the error" do
      assert {:error, %Error{details: %{option: :python}} = e} =
               Snakepit.Pool.start_link(TestPools.opts(python: "python_does_not_exist_3"))

      assert e.message =~ "\"python_does_not_exist_3\" was not found on the PATH"
    end
  end

  describe "startup" do
    test "an adapter that cannot be imported fails the start with the Python error" do
      Process.flag(:trap_exit, true)

      log =
        capture_log(fn ->
          assert {:error, %Error{} = e} =
                   Snakepit.Pool.start_link(TestPools.opts(adapter: "snakepit_test_broken.Adapter"))

          send(self(), {:error_was, e})
        end)

      assert_received {:error_was, e}
      assert e.category == :pool
      assert e.message =~ "failed to load"

      assert e.message =~
               "ModuleNotFoundError: No module named 'snakepit_module_that_does_not_exist'"

      assert e.python_traceback =~ "import snakepit_module_that_does_not_exist"
      assert log =~ "failed to load"
    end

    test "an interpreter that exits before the handshake fails the start with its stderr" do
      Process.flag(:trap_exit, true)
      script = Path.join(System.tmp_dir!(), "fake_python_#{System.unique_integer([:positive])}")
      File.write!(script, "#!/bin/sh\necho 'fake interpreter refuses' >&2\nexit 9\n")
      File.chmod!(script, 0o755)

      capture_log(fn ->
        assert {:error, %Error{category: :pool} = e} =
                 Snakepit.Pool.start_link(TestPools.opts(python: script))

        send(self(), {:error_was, e})
      end)

      assert_received {:error_was, e}
      assert e.message =~ "before its handshake"
      assert e.message =~ "fake interpreter refuses"
    end

    test "await_ready waits for every worker; unknown pools are an error" do
      opts = TestPools.opts(size: 3)
      start_supervised!({Snakepit.Pool, opts})
      assert Snakepit.await_ready(opts[:name], 30_000) == :ok
      assert Snakepit.get_stats(opts[:name]).idle == 3
      assert {:error, %Error{category: :pool}} = Snakepit.await_ready(:no_such_pool, 100)
    end

    test "workers get the configured env and cwd, and their own worker id" do
      cwd = System.tmp_dir!()
      opts = TestPools.opts(size: 2, env: %{"SNAKEPIT_TEST_VAR" => "from elixir"}, cwd: cwd)
      start_supervised!({Snakepit.Pool, opts})
      :ok = Snakepit.await_ready(opts[:name], 30_000)

      [%{os_pid: os_pid, worker_id: id}, %{os_pid: other_pid, worker_id: other_id}] =
        Snakepit.list_workers(opts[:name])

      assert id != other_id
      assert "SNAKEPIT_WORKER_ID=#{other_id}" in environ(other_pid)
      environ = environ(os_pid)
      assert "SNAKEPIT_TEST_VAR=from elixir" in environ
      assert "SNAKEPIT_WORKER_ID=#{id}" in environ
      assert File.read_link!("/proc/#{os_pid}/cwd") == Path.expand(cwd)
      assert Enum.any?(environ, &String.starts_with?(&1, "SNAKEPIT_OWNER="))
      # Its own process group, under its shepherd, which leads its own
      # session: no terminal signal of the BEAM's reaches either.
      [_state, shepherd, pgid, sid] = stat(os_pid)
      assert pgid == os_pid and sid == shepherd
      [_state, _beam, ^shepherd, ^shepherd] = stat(shepherd)
      assert File.read!("/proc/#{shepherd}/cmdline") =~ "snakepit_shepherd"
      # Neither holds any of the BEAM's own descriptors: only stdio, the
      # lifeline (shepherd) or control pipe and segment socket (worker), and
      # the worker's own.
      assert fds(shepherd) |> Map.keys() |> Enum.sort() == [0, 1, 2, 3, 4]
      assert fds(shepherd)[3] =~ "socket:" and fds(shepherd)[4] =~ "pidfd"
      assert fds(os_pid)[4] =~ "socket:"

      for {fd, target} <- fds(os_pid), fd > 4 do
        refute target =~ ~r/socket:|eventpoll|timerfd/, "worker fd #{fd} -> #{target}"
      end
    end

    test "frames over :max_frame_bytes are refused in both directions" do
      opts = TestPools.opts(size: 1, max_frame_bytes: 4_096)
      start_supervised!({Snakepit.Pool, opts})
      pool = opts[:name]

      assert {:error, %Error{category: :validation} = e} =
               Snakepit.execute("echo", %{value: :binary.copy("x", 5_000)}, pool: pool)

      assert e.message =~ "larger than max_frame_bytes (4096 bytes)"
      assert e.details.limit == 4_096

      assert {:error, %Error{category: :python_error} = e} =
               Snakepit.execute("make_bytes", %{n: 5_000}, pool: pool)

      assert e.message =~ "exceeds the frame limit of 4096 bytes"
      assert Snakepit.execute("make_bytes", %{n: 3_000}, pool: pool) |> elem(0) == :ok
    end
  end

  describe "workers that die" do
    test "a worker dying mid-call answers its caller with :worker and is replaced" do
      opts = TestPools.opts(size: 1)
      start_supervised!({Snakepit.Pool, opts})
      pool = opts[:name]
      [old] = os_pids(pool)

      log =
        capture_log(fn ->
          assert {:error, %Error{category: :worker} = e} =
                   Snakepit.execute("exit_now", %{code: 3}, pool: pool)

          assert e.details.os_pid == old
          assert e.details.status == 3 and e.details.signal == nil
          assert e.message =~ "exited with status 3 during the call"
          # The queue holds calls until the replacement is up.
          assert Snakepit.execute("add", %{a: 1, b: 2}, pool: pool) == {:ok, 3}
        end)

      assert log =~ "exited"
      [new] = os_pids(pool)
      assert new != old
      stats = Snakepit.get_stats(pool)
      assert stats.restarts == 1 and stats.worker_errors == 1
    end

    test "a segfault reaches the caller as a :worker error with the signal" do
      opts = TestPools.opts(size: 1)
      start_supervised!({Snakepit.Pool, opts})

      capture_log(fn ->
        assert {:error, %Error{category: :worker} = e} =
                 Snakepit.execute("segfault", %{}, pool: opts[:name])

        assert e.details.signal == 11 and e.message =~ "SIGSEGV"
        assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: opts[:name])
      end)
    end

    test "calls queued behind a dying worker are served by its replacement" do
      opts = TestPools.opts(size: 1, pipeline_depth: 1)
      start_supervised!({Snakepit.Pool, opts})
      pool = opts[:name]
      [old] = os_pids(pool)

      capture_log(fn ->
        running = TestPools.occupy(pool)

        queued =
          for i <- 1..5, do: Task.async(fn -> Snakepit.execute("echo", %{value: i}, pool: pool) end)

        # Killed only once all five are queued behind it.
        wait_until(fn -> Snakepit.get_stats(pool).queued == 5 end)
        {_, 0} = System.cmd("kill", ["-KILL", "#{old}"])

        assert [{:error, %Error{category: :worker} = e}] = TestPools.await_occupied(running)
        assert e.details.signal == 9 and e.message =~ "killed by signal 9 (SIGKILL)"
        assert Enum.map(queued, &Task.await(&1, 10_000)) == Enum.map(1..5, &{:ok, &1})
      end)

      [new] = os_pids(pool)
      assert new != old
      assert [%{requests: 5}] = Snakepit.list_workers(pool)
    end
  end

  describe "stopping" do
    test "stopping a pool answers queued calls, finishes the running one, and leaves no process" do
      opts = TestPools.opts(size: 1, pipeline_depth: 1)
      start_supervised!({Snakepit.Pool, opts}, id: :stopping)
      pool = opts[:name]
      [os_pid] = os_pids(pool)
      [_state, shepherd, _pgid, _sid] = stat(os_pid)

      running = TestPools.occupy(pool)
      queued = Task.async(fn -> Snakepit.execute("echo", %{value: 1}, pool: pool) end)
      wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)

      # Stopping waits for the running call: release it once the stop is
      # under way (the pool unpublishes its handle first thing).
      releaser =
        Task.async(fn ->
          wait_until(fn -> Snakepit.Pool.lookup(pool) == nil end)
          running.release.()
        end)

      :ok = stop_supervised(:stopping)
      Task.await(releaser)

      assert {:error, %Error{category: :pool}} = Task.await(queued)
      assert TestPools.await_occupied(running) == [{:ok, "released"}]
      refute TestPools.os_alive?(os_pid)
      # Nor its shepherd.
      wait_until(fn -> not TestPools.os_alive?(shepherd) end)
      assert {:error, %Error{category: :pool}} = Snakepit.execute("echo", %{}, pool: pool)
    end

    test "if the pool process is killed outright, its workers die and callers get answers" do
      Process.flag(:trap_exit, true)
      opts = TestPools.opts(size: 2)
      {:ok, pid} = Snakepit.Pool.start_link(opts)
      pool = opts[:name]
      :ok = Snakepit.await_ready(pool, 30_000)
      pids = os_pids(pool)

      caller = TestPools.occupy(pool)
      Process.exit(pid, :kill)

      assert [{:error, %Error{category: category}}] = TestPools.await_occupied(caller)
      assert category in [:worker, :pool]
      wait_until(fn -> not Enum.any?(pids, &TestPools.os_alive?/1) end)
    end
  end

  defp environ(os_pid), do: File.read!("/proc/#{os_pid}/environ") |> String.split(<<0>>)

  defp stat(os_pid) do
    [_, after_comm] = String.split(File.read!("/proc/#{os_pid}/stat"), ") ")
    after_comm |> String.split() |> Enum.take(4) |> Enum.map(&parse_stat_field/1)
  end

  defp parse_stat_field(field) do
    case Integer.parse(field) do
      {n, ""} -> n
      _ -> field
    end
  end

  defp fds(os_pid) do
    for fd <- File.ls!("/proc/#{os_pid}/fd"), into: %{} do
      {String.to_integer(fd), File.read_link!("/proc/#{os_pid}/fd/#{fd}")}
    end
  end
end
