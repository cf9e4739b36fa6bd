defmodule Snakepit.HandshakeTest do
  # The native side checks a worker's protocol version before it counts the
  # worker as ready: a worker that speaks another never receives a call.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  @adapter "snakepit_test_other_protocol.OtherProtocolAdapter"
  @switch_var "SNAKEPIT_TEST_OTHER_PROTOCOL_WHILE"

  test "a pool whose workers speak another protocol version fails with a :worker error naming both" do
    Process.flag(:trap_exit, true)
    opts = opts(adapter: @adapter, size: 1, max_start_failures: 1)

    assert {:error, %Error{category: :worker} = e} = Snakepit.Pool.start_link(opts)
    assert e.message =~ "pool #{inspect(opts[:name])} could not start its workers"
    assert e.message =~ ~r/speaks protocol version 4, this host speaks 3/
    assert %{expected_protocol: 3, protocol: 4, pool: pool} = e.details
    assert pool == opts[:name]
  end

  test "while replacements speak another version, calls wait for a worker that speaks ours" do
    switch = Path.join(tmp_dir("protocol_switch"), "other")

    pool =
      start_pool(
        adapter: @adapter,
        size: 1,
        max_start_failures: 50,
        env: [{@switch_var, switch}]
      )

    {:ok, first} = Snakepit.execute("pid", %{}, pool: pool)

    # From now on a new worker announces protocol 4 and is refused.
    File.write!(switch, "")

    log =
      capture_log(fn ->
        assert {:error, %Error{category: :worker}} = Snakepit.execute("exit_now", %{}, pool: pool)
        waiting = Task.async(fn -> Snakepit.execute("pid", %{}, pool: pool, timeout: 30_000) end)
        # The crash, then two refused replacements.
        wait_until(fn -> Snakepit.get_stats(pool).restarts >= 3 end, 20_000)
        stats = Snakepit.get_stats(pool)
        assert stats.queued == 1 and stats.in_flight == 0, inspect(stats)

        File.rm!(switch)
        assert {:ok, served_by} = Task.await(waiting, 30_000)
        assert served_by != first
      end)

    assert log =~ "speaks protocol version 4, this host speaks 3"
    stats = Snakepit.get_stats(pool)
    assert %{completed: 2, worker_errors: 1, queued: 0} = stats
    assert_partition(stats)
  end
end
