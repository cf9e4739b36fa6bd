defmodule Snakepit.Adversarial.SpawnFailureTest do
  # A worker that cannot be spawned (a missing working directory, an
  # environment too large for exec) is an ordinary start failure with a
  # clear error, never a NIF panic.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  setup do
    Process.flag(:trap_exit, true)
    :ok
  end

  test "a missing :cwd fails the start with an error naming the directory" do
    missing = Path.join(tmp_dir("spawn_cwd"), "gone")
    assert {:error, %Error{category: :pool} = e} = Snakepit.Pool.start_link(opts(cwd: missing))
    assert e.message =~ "could not spawn"
    assert e.message =~ missing
    refute inspect(e) =~ "nif_panicked"
  end

  test "an environment too large for exec fails the start with E2BIG, not a panic" do
    huge = String.duplicate("x", 200_000)
    env = for i <- 1..20, do: {"SNAKEPIT_TEST_HUGE_#{i}", huge}
    assert {:error, %Error{category: :pool} = e} = Snakepit.Pool.start_link(opts(env: env))
    assert e.message =~ "too large for exec"
  end

  test "a cwd removed while the pool runs: restarts fail with backoff, then the pool stops with the cause" do
    cwd = tmp_dir("spawn_cwd_removed")

    opts = opts(cwd: cwd, size: 1, max_start_failures: 2, shutdown_timeout: 0)
    {:ok, pid} = Snakepit.Pool.start_link(opts)
    pool = opts[:name]
    :ok = Snakepit.await_ready(pool, 30_000)
    File.rm_rf!(cwd)

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :worker}} = Snakepit.execute("exit_now", %{}, pool: pool)
        assert_receive {:EXIT, ^pid, {:shutdown, %Error{category: :pool} = e}}, 30_000
        assert e.message =~ ":max_start_failures"
        assert e.message =~ cwd
      end)

    assert log =~ "does not exist"
    refute log =~ "nif_panicked"
  end
end
