defmodule Snakepit.AdapterContractTest do
  # One set of expectations, run against a Python pool (the test adapter)
  # and against a pool of Snakepit.Test.MockAdapter: a user who tests
  # against the mock sees what a Python pool would answer.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  for {kind, adapter} <- [python: nil, mock: Snakepit.Test.MockAdapter] do
    describe "#{kind} pool" do
      setup do
        opts = [size: 2]
        opts = if unquote(adapter), do: [adapter: unquote(adapter)] ++ opts, else: opts
        %{pool: start_pool(opts)}
      end

      test "execute/3: a value, as it crosses the codec", %{pool: pool} do
        assert Snakepit.execute("ping", %{}, pool: pool) == {:ok, "pong"}

        assert Snakepit.execute("echo", %{value: %{a: {1, 2}, b: nil}}, pool: pool) ==
                 {:ok, %{"a" => [1, 2], "b" => nil}}
      end

      test "a failing command is a :python_error carrying its message", %{pool: pool} do
        assert {:error, %Error{category: :python_error} = e} =
                 Snakepit.execute("error", %{message: "nope"}, pool: pool)

        assert e.message =~ "nope"
        assert is_binary(e.details.exception_type)
      end

      test "an unknown command is a :validation error", %{pool: pool} do
        assert {:error, %Error{category: :validation}} =
                 Snakepit.execute("no_such_tool", %{}, pool: pool)
      end

      test "a call past its timeout is a :timeout error, and the pool goes on", %{pool: pool} do
        assert {:error, %Error{category: :timeout} = e} =
                 Snakepit.execute("slow", %{ms: 5_000}, pool: pool, timeout: 100)

        assert e.details.queue == false
        assert Snakepit.execute("ping", %{}, pool: pool, timeout: 10_000) == {:ok, "pong"}
        refute_stray_answers()
      end

      test "streams: every item in order, or as many as taken", %{pool: pool} do
        assert Snakepit.stream("stream", %{n: 5}, pool: pool) |> Enum.to_list() == [0, 1, 2, 3, 4]
        assert Snakepit.stream("stream", %{n: 1_000}, pool: pool) |> Enum.take(3) == [0, 1, 2]

        test = self()

        assert :ok =
                 Snakepit.execute_stream("stream", %{n: 3}, &send(test, {:item, &1}), pool: pool)

        for i <- 0..2, do: assert_received({:item, ^i})
        # A generator called plainly gives its items as a list.
        assert Snakepit.execute("stream", %{n: 3}, pool: pool) == {:ok, [0, 1, 2]}
        refute_stray_answers()
      end

      test "sessions keep their state on one worker", %{pool: pool} do
        id = Snakepit.new_session_id()

        assert {:ok, %{"n" => 1}} =
                 Snakepit.execute_in_session(id, "session_counter", %{}, pool: pool)

        assert {:ok, %{"n" => 2}} =
                 Snakepit.execute_in_session(id, "session_counter", %{}, pool: pool)

        assert :ok = Snakepit.end_session(id, pool: pool)
      end

      test "get_stats/1 counts each call once under its outcome", %{pool: pool} do
        {:ok, _} = Snakepit.execute("ping", %{}, pool: pool)
        {:error, _} = Snakepit.execute("error", %{}, pool: pool)
        stats = Snakepit.get_stats(pool)
        assert stats.requests == 2 and stats.completed == 1 and stats.python_errors == 1
      end
    end
  end
end
