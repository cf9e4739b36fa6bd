defmodule Snakepit.TelemetryTest do
  # Events through the test stand-in of :telemetry (test/support), from
  # real pools: the documented table is exactly what a run emits.
  use ExUnit.Case, async: false
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  setup do
    test = self()
    id = "snakepit-test-#{System.unique_integer([:positive])}"
    events = Snakepit.Telemetry.documented_events()

    :ok =
      :telemetry.attach_many(
        id,
        events,
        fn event, measurements, metadata, _ ->
          send(test, {:event, event, measurements, metadata})
        end,
        nil
      )

    on_exit(fn -> :telemetry.detach(id) end)
    :ok
  end

  defp events_of(pool, acc \\ MapSet.new()) do
    receive do
      {:event, event, _m, %{pool: ^pool}} -> events_of(pool, MapSet.put(acc, event))
      {:event, _event, _m, _metadata} -> events_of(pool, acc)
    after
      0 -> acc
    end
  end

  test "every documented event is emitted by a real run, and nothing else" do
    assert Snakepit.Telemetry.enabled?()

    pool =
      start_pool(
        size: 1,
        max_queue: 1,
        # Calls queue rather than wait in the worker's pipe: a full queue.
        pipeline_depth: 1,
        max_requests: 50,
        circuit_breaker: [threshold: 1, cooldown: 100]
      )

    # calls, with and without an error; execute! raising
    {:ok, _} = Snakepit.execute("echo", %{value: 1}, pool: pool)
    {:error, _} = Snakepit.execute("boom", %{message: "x"}, pool: pool)
    assert_raise Error, fn -> Snakepit.execute!("boom", %{message: "y"}, pool: pool) end

    # a full queue
    busy = occupy(pool, 1)
    queued = Task.async(fn -> Snakepit.execute("echo", %{value: 2}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).queued == 1 end)
    assert {:error, %Error{category: :pool}} = Snakepit.execute("echo", %{value: 3}, pool: pool)
    busy.release.()
    await_occupied(busy)
    {:ok, 2} = Task.await(queued)

    # streams, one whose consumer raises
    [0, 1] = Snakepit.stream("count_up", %{n: 2}, pool: pool) |> Enum.to_list()

    assert_raise RuntimeError, fn ->
      Snakepit.execute_stream("count_up", %{n: 3}, fn _ -> raise "stop" end, pool: pool)
    end

    # a session, started and ended
    {:ok, _} = Snakepit.execute_in_session("s", "session_counter", %{}, pool: pool)
    :ok = Snakepit.end_session("s", pool: pool)

    # a worker that dies mid-call opens the circuit (threshold 1); after the
    # cooldown, a probe closes it
    [%{os_pid: os_pid}] = Snakepit.list_workers(pool)
    {:error, %Error{category: :worker}} = Snakepit.execute("exit_now", %{}, pool: pool)

    assert {:error, %Error{category: :pool, details: %{circuit: :open}}} =
             Snakepit.execute("ping", %{}, pool: pool)

    :ok = Snakepit.await_ready(pool, 10_000)
    wait_until(fn -> match?({:ok, "pong"}, Snakepit.execute("ping", %{}, pool: pool)) end)
    assert Snakepit.get_stats(pool).circuit == :closed
    refute Enum.any?(Snakepit.list_workers(pool), &(&1.os_pid == os_pid))

    # a recycle by max_requests
    Enum.each(1..50, fn _ -> {:ok, _} = Snakepit.execute("ping", %{}, pool: pool) end)
    wait_until(fn -> Snakepit.get_stats(pool).recycles == 1 end)
    :ok = Snakepit.await_ready(pool, 10_000)

    seen = events_of(pool)
    documented = MapSet.new(Snakepit.Telemetry.documented_events())
    assert MapSet.difference(documented, seen) |> Enum.sort() == [], "documented but not emitted"
    assert MapSet.difference(seen, documented) |> Enum.sort() == [], "emitted but not documented"
  end

  test "a call's :stop event has its timings, worker and correlation id" do
    pool = start_pool(size: 1)
    [%{os_pid: os_pid}] = Snakepit.list_workers(pool)
    {:ok, 1} = Snakepit.execute("echo", %{value: 1}, pool: pool, correlation_id: "corr-1")

    assert_receive {:event, [:snakepit, :call, :start], %{system_time: _},
                    %{pool: ^pool, command: "echo", correlation_id: "corr-1", attempt: 1}}

    assert_receive {:event, [:snakepit, :call, :stop], m,
                    %{pool: ^pool, correlation_id: "corr-1", worker_os_pid: ^os_pid, outcome: :ok}}

    assert m.duration >= m.queue_time + m.run_time
    assert m.run_time > 0

    {:error, _} = Snakepit.execute("boom", %{message: "x"}, pool: pool, correlation_id: "corr-2")

    assert_receive {:event, [:snakepit, :call, :stop], _,
                    %{correlation_id: "corr-2", outcome: :python_error, error: %Error{}}}
  end

  test "an error's details are redacted in event metadata" do
    pool = start_pool(size: 1)
    details = %{"password" => "hunter2", "user" => "bob"}

    {:error, e} =
      Snakepit.execute("raise_tool_error", %{code: "auth", details: details}, pool: pool)

    assert e.details["password"] == "**redacted**" and e.details["user"] == "bob"
    assert_receive {:event, [:snakepit, :call, :stop], _, %{error: %Error{details: d}}}
    refute inspect(d) =~ "hunter2"
  end
end
