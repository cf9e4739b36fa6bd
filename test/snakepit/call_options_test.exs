defmodule Snakepit.CallOptionsTest do
  # Every entry point checks its options against Snakepit.CallOptions, and
  # every option a streaming call accepts works there.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  describe "an unknown option is a :validation error naming it and the known ones" do
    test "for execute/3 and execute_in_session/4" do
      for run <- [
            fn -> Snakepit.execute("echo", %{value: 1}, timout: 5) end,
            fn -> Snakepit.execute_in_session(Snakepit.new_session_id(), "echo", %{}, timout: 5) end
          ] do
        assert {:error, %Error{category: :validation} = e} = run.()
        assert e.details.option == :timout
        assert e.message =~ "unknown call option :timout"
        assert e.message =~ ":timeout" and e.message =~ ":retry"
        refute e.message =~ ":chunk_timeout"
        assert e.details.correlation_id
      end
    end

    test "for stream/3, execute_stream/4 and execute_in_session_stream/5" do
      e =
        assert_raise Error, fn ->
          Snakepit.stream("countdown", %{n: 1}, windw: 2) |> Enum.to_list()
        end

      assert {e.category, e.details.option} == {:validation, :windw}
      assert e.message =~ ":stream_window"

      assert {:error, %Error{category: :validation, details: %{option: :windw}}} =
               Snakepit.execute_stream("countdown", %{n: 1}, fn _ -> :ok end, windw: 2)

      assert {:error, %Error{category: :validation, details: %{option: :windw}}} =
               Snakepit.execute_in_session_stream("s", "countdown", %{n: 1}, fn _ -> :ok end,
                 windw: 2
               )
    end

    test "options must be a keyword list" do
      assert {:error, %Error{category: :validation} = e} = Snakepit.execute("echo", %{}, [:oops])
      assert e.message =~ "keyword list"
    end
  end

  test "an option of the other kind of call is refused, saying so" do
    assert {:error, %Error{category: :validation} = e} =
             Snakepit.execute("echo", %{value: 1}, chunk_timeout: 5)

    assert e.message == "the :chunk_timeout option applies to streaming calls only"
  end

  test "streams refuse :retry (chunks taken cannot be taken back), but accept false" do
    assert {:error, %Error{category: :validation, details: %{option: :retry}} = e} =
             Snakepit.execute_stream("stream_pid", %{n: 1}, fn _ -> :ok end,
               retry: [max_attempts: 2]
             )

    assert e.message =~ "streams are not retried"
    assert :ok = Snakepit.execute_stream("countdown", %{n: 1}, fn _ -> :ok end, retry: false)

    id = Snakepit.new_session_id()

    assert {:error, %Error{category: :validation, details: %{option: :retry}}} =
             Snakepit.execute_in_session_stream(id, "countdown", %{n: 1}, fn _ -> :ok end,
               retry: true
             )

    e =
      assert_raise Error, fn ->
        Snakepit.stream("countdown", %{n: 1}, retry: true) |> Enum.to_list()
      end

    assert {e.category, e.details.option} == {:validation, :retry}
    assert [1] = Snakepit.stream("countdown", %{n: 1}, retry: false) |> Enum.to_list()
  end

  describe ":queue_timeout works for every streaming entry point" do
    setup do
      pool = start_pool(size: 1, pipeline_depth: 1)
      %{pool: pool, occupied: occupy(pool)}
    end

    test "execute_stream/4, execute_in_session_stream/5 and stream/3", %{pool: pool} = ctx do
      opts = [pool: pool, queue_timeout: 50, timeout: 5_000]
      never = fn chunk -> flunk("got a chunk: #{inspect(chunk)}") end

      assert {:error, %Error{category: :timeout, details: %{queue: true}} = e} =
               Snakepit.execute_stream("stream_pid", %{n: 2}, never, opts)

      assert e.message =~ ":queue_timeout"

      assert {:error, %Error{category: :timeout, details: %{queue: true}}} =
               Snakepit.execute_in_session_stream("s1", "stream_pid", %{n: 2}, never, opts)

      e =
        assert_raise Error, fn -> Snakepit.stream("stream_pid", %{n: 2}, opts) |> Enum.to_list() end

      assert {e.category, e.details.queue} == {:timeout, true}

      ctx.occupied.release.()
      assert [{:ok, "released"}] = await_occupied(ctx.occupied)
      assert %{queue_timeouts: 3, queued: 0} = Snakepit.get_stats(pool)
      # The worker is free again: a stream that does not wait runs.
      assert [_, _] = Snakepit.stream("stream_pid", %{n: 2}, opts) |> Enum.to_list()
      refute_stray_answers()
    end

    test "a stream that a worker starts within its queue timeout runs to its end", ctx do
      opts = [pool: ctx.pool, queue_timeout: 2_000, timeout: 10_000]
      stream = Task.async(fn -> Snakepit.stream("stream_pid", %{n: 3}, opts) |> Enum.to_list() end)
      wait_until(fn -> Snakepit.get_stats(ctx.pool).queued == 1 end)
      ctx.occupied.release.()
      assert [pid, pid, pid] = Task.await(stream)
      assert %{queue_timeouts: 0} = Snakepit.get_stats(ctx.pool)
    end
  end
end
