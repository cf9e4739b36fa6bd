defmodule Snakepit.BrokenWorkerTest do
  # A worker that breaks the wire protocol is killed; its caller gets a
  # :transport error, and the pool replaces it and keeps serving.
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias Snakepit.{Error, TestPools}

  @fake Path.expand("../support/python/fake_worker.py", __DIR__)

  for {mode, reason} <- [
        {"oversize", "exceeds the limit"},
        {"garbage", "not a [kind, id, body] array"},
        {"close_stdout", "closed stdout but kept running"}
      ] do
    test "a worker whose answer is #{mode} is replaced and its caller told" do
      opts = TestPools.opts(size: 1, python: @fake, env: %{"FAKE_WORKER_MODE" => unquote(mode)})
      start_supervised!({Snakepit.Pool, opts})
      pool = opts[:name]
      [old] = Enum.map(Snakepit.list_workers(pool), & &1.os_pid)

      capture_log(fn ->
        assert {:error, %Error{} = e} = Snakepit.execute("break", %{}, pool: pool)
        send(self(), {:error_was, e})
        # The replacement serves the next call.
        assert Snakepit.execute("echo", %{value: 7}, pool: pool, timeout: 10_000) == {:ok, 7}
      end)

      assert_received {:error_was, e}

      assert e.category == :transport
      assert e.message =~ "broke the protocol"
      assert e.details.reason =~ unquote(reason)

      refute TestPools.os_alive?(old)
      assert Snakepit.get_stats(pool).restarts == 1
    end
  end
end
