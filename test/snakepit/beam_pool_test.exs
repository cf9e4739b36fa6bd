defmodule Snakepit.BeamPoolTest do
  # What a pool of an Elixir adapter does beyond the shared contract
  # (adapter_contract_test.exs): worker deaths, queue timeouts, raises.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  defmodule Raising do
    @behaviour Snakepit.Adapter

    @impl true
    def init(config), do: {:ok, config[:worker_id]}

    @impl true
    def execute("raise", _args, _opts), do: raise(ArgumentError, "bad input")
    def execute("worker", _args, opts), do: {:ok, opts[:state]}
    def execute("odd", _args, _opts), do: :not_a_result
    def execute("pid", _args, _opts), do: {:ok, %{"pid" => self()}}
  end

  test "a raise is a :python_error with the exception's type and the Elixir stacktrace" do
    pool = start_pool(adapter: Raising, size: 1)

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute("raise", %{}, pool: pool)

    assert e.details.exception_type == "ArgumentError"
    assert e.message =~ "bad input"
    assert e.python_traceback =~ "beam_pool_test.exs"
    assert {:ok, 1} = Snakepit.execute("worker", %{}, pool: pool)
  end

  test "a result that is not {:ok, _} or {:error, _}, or cannot cross, is an error" do
    pool = start_pool(adapter: Raising, size: 1)
    assert {:error, %Error{category: :python_error}} = Snakepit.execute("odd", %{}, pool: pool)
    assert {:error, %Error{} = e} = Snakepit.execute("pid", %{}, pool: pool)
    assert e.message =~ "cannot be sent"
  end

  test "a worker that dies fails the calls it held, loses its sessions, and is replaced" do
    pool = start_pool(adapter: Snakepit.Test.MockAdapter, size: 1)
    {:ok, %{"n" => 1}} = Snakepit.execute_in_session("s", "session_counter", %{}, pool: pool)
    [%{pid: worker}] = Snakepit.list_workers(pool)

    slow = Task.async(fn -> Snakepit.execute("slow", %{ms: 10_000}, pool: pool) end)
    wait_until(fn -> match?([%{running: 1}], Snakepit.list_workers(pool)) end)
    Process.exit(worker, :kill)

    assert {:error, %Error{category: :worker}} = Task.await(slow)

    assert {:error, %Error{category: :worker, details: %{session_lost: true}}} =
             Snakepit.execute_in_session("s", "session_counter", %{}, pool: pool)

    assert {:ok, "pong"} = Snakepit.execute("ping", %{}, pool: pool)
    stats = Snakepit.get_stats(pool)
    assert stats.restarts == 1 and stats.sessions_lost == 1
  end

  test ":queue_timeout takes back a call no worker started" do
    pool = start_pool(adapter: Snakepit.Test.MockAdapter, size: 1)
    busy = Task.async(fn -> Snakepit.execute("slow", %{ms: 500}, pool: pool) end)
    wait_until(fn -> match?([%{running: 1}], Snakepit.list_workers(pool)) end)

    assert {:error, %Error{category: :timeout, details: %{queue: true}}} =
             Snakepit.execute("ping", %{}, pool: pool, queue_timeout: 50)

    assert {:ok, 500} = Task.await(busy)
    assert Snakepit.get_stats(pool).queue_timeouts == 1
    refute_stray_answers()
  end

  test "many callers at once each get their own answer" do
    pool = start_pool(adapter: Snakepit.Test.MockAdapter, size: 4)

    results =
      1..200
      |> Enum.map(fn i ->
        Task.async(fn -> Snakepit.execute("echo", %{value: i}, pool: pool) end)
      end)
      |> Task.await_many(10_000)

    assert results == Enum.map(1..200, &{:ok, &1})
  end

  test "an adapter module that is not one is refused" do
    assert {:error, %Error{category: :validation}} =
             Snakepit.Pool.start_link(name: :not_an_adapter, adapter: String)
  end
end
