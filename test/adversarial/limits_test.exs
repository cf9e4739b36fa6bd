defmodule Snakepit.Adversarial.LimitsTest do
  # Caller data of any size, and durations past what the VM can wait for:
  # errors quote the data cut short, and bad values are refused before
  # anything is submitted.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  @huge String.duplicate("x", 1_000_000)

  describe "errors quote caller data cut short" do
    setup do
      %{pool: start_pool(size: 1)}
    end

    test "an unknown tool of 1 MB: the worker's message stays short", %{pool: pool} do
      assert {:error, %Error{category: :validation} = e} = Snakepit.execute(@huge, %{}, pool: pool)

      # The list of tools after the quoted name grows with the test adapter.
      [quoted | _] = String.split(e.message, "; this adapter has: ")
      assert byte_size(quoted) < 512
      assert e.message =~ "unknown tool 'xxxx"
      assert e.message =~ "(1000000 bytes)"
      assert byte_size(e.details.tool) < 1024
    end

    test "a 1 MB tool name that times out, in the queue or running", %{pool: pool} do
      occupied = occupy(pool)

      assert {:error, %Error{category: :timeout} = queued} =
               Snakepit.execute(@huge, %{}, pool: pool, timeout: 20_000, queue_timeout: 1)

      assert {:error, %Error{category: :timeout} = timed_out} =
               Snakepit.execute(@huge, %{}, pool: pool, timeout: 1)

      occupied.release.()
      assert await_occupied(occupied) == [{:ok, "released"}]

      for e <- [queued, timed_out] do
        assert byte_size(e.message) < 1024
        assert e.message =~ ~s("xxxx)
        assert e.message =~ "(1000000 bytes)"
      end
    end

    test "arguments refused before they are sent", %{pool: pool} do
      big_list = Enum.to_list(1..1_000_000)

      for {command, args, opts} <- [
            {big_list, %{}, []},
            {"echo", big_list, []},
            {"echo", %{}, [session_id: big_list]},
            {"echo", %{}, [timeout: big_list]},
            {"echo", %{}, [queue_timeout: @huge]}
          ] do
        assert {:error, %Error{category: :validation} = e} =
                 Snakepit.execute(command, args, [pool: pool] ++ opts)

        assert byte_size(e.message) < 1024
      end

      assert {:error, %Error{category: :pool} = e} = Snakepit.execute("echo", %{}, pool: big_list)
      assert byte_size(e.message) < 1024
    end
  end

  describe "durations past the VM's limit" do
    @max 4_294_967_295

    test "execute/3 refuses them before submitting anything" do
      pool = start_pool(size: 1)

      for opts <- [[timeout: @max + 1], [queue_timeout: @max + 1], [timeout: 2 ** 64]] do
        assert {:error, %Error{category: :validation} = e} =
                 Snakepit.execute("echo", %{value: 1}, [pool: pool] ++ opts)

        [{key, _}] = opts
        assert %{option: ^key} = e.details
        assert e.message =~ "must be :infinity or an integer from 0 to 4294967295 (ms)"
      end

      # Nothing reached the pool, and no answer is on its way.
      assert Snakepit.get_stats(pool).requests == 0

      assert Snakepit.execute("echo", %{value: 2}, pool: pool, timeout: @max, queue_timeout: @max) ==
               {:ok, 2}

      refute_stray_answers()
    end

    test "await_ready/2 refuses them too" do
      pool = start_pool(size: 1)
      assert {:error, %Error{category: :validation}} = Snakepit.await_ready(pool, @max + 1)
      assert {:error, %Error{category: :validation}} = Snakepit.await_ready(pool, -1)
      assert Snakepit.await_ready(pool, @max) == :ok
      assert Snakepit.await_ready(pool, :infinity) == :ok
    end

    test "pool options refuse them" do
      for option <- [
            :startup_timeout,
            :cancel_grace,
            :heartbeat_interval,
            :max_age,
            :shutdown_timeout,
            :timeout,
            :queue_timeout
          ] do
        assert {:ok, _} = Snakepit.Config.validate([{option, @max}, adapter: "m.A"])

        assert {:error, %Error{category: :validation, details: %{option: ^option}}} =
                 Snakepit.Config.validate([{option, @max + 1}, adapter: "m.A"])
      end
    end

    test "a pool with the longest shutdown_timeout still has a valid child spec" do
      spec = Snakepit.Pool.child_spec(adapter: "m.A", shutdown_timeout: @max)
      assert spec.shutdown <= @max
    end
  end

  test "integers the native pool cannot hold are refused, not a crash at start" do
    for option <- [:max_requests, :max_queue, :max_memory_mb] do
      assert {:error, %Error{category: :validation, details: %{option: ^option}} = e} =
               Snakepit.Pool.start_link(opts([{option, 2 ** 70}]))

      assert e.message =~ "up to 9223372036854775807"
    end
  end
end
