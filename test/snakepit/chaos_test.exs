defmodule Snakepit.ChaosTest do
  # Thousands of calls, session calls and streams from many callers while
  # workers are SIGKILLed at random: every call and stream gets exactly one
  # answer, every {:ok, _} is the answer to its own request, every stream's
  # chunks are its own, in order, and the pool ends healthy. Runs under the VM's
  # long_schedule monitor: no NIF may hold a normal scheduler for 5 ms.
  # Not async: the system monitor is global to the VM.
  use ExUnit.Case, async: false
  # Worker exits logged after the run's capture_log ends stay quiet too.
  @moduletag :capture_log
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.Error

  @callers 32
  @calls_per_caller 100
  # Killed mid-call, timed out (rem 10 == 2 always does), or a Python
  # error answered on purpose; never :transport or :pool.
  @expected_errors [:worker, :timeout]
  @stream_items 20

  @tag timeout: 120_000
  test "random worker kills under load: one right answer per call, a healthy pool after" do
    chaos(size: 4, pipeline_depth: 2, cancel_grace: 200)
  end

  @tag timeout: 120_000
  test "the same with workers that run 4 calls at once" do
    chaos(size: 2, concurrency: 4, pipeline_depth: 2, cancel_grace: 200)
  end

  defp chaos(pool_opts) do
    pool = start_pool(pool_opts)
    test = self()

    {{results, kills}, offenders} =
      nif_long_schedules(fn ->
        killer = spawn_link(fn -> kill_at_random(pool, 0) end)

        log =
          capture_log(fn ->
            callers = for c <- 1..@callers, do: spawn_link(fn -> caller(test, pool, c) end)

            results = for c <- callers, do: await_results(c, pool)

            send(killer, {:stop, test})

            kills =
              receive do
                {:kills, n} -> n
              after
                10_000 ->
                  flunk(
                    "the killer is stuck in #{inspect(Process.info(killer, :current_stacktrace))}"
                  )
              end

            send(test, {:results, results, kills})
            # Quiesce, then ask every caller whether anything else arrived.
            wait_until(fn -> idle?(pool) end, 20_000)
            for c <- callers, do: send(c, {:check, test})
            for c <- callers, do: assert_receive({:mailbox, ^c, []}, 5_000)
          end)

        assert log =~ "was killed by signal 9"
        assert_received {:results, results, kills}
        {results, kills}
      end)

    assert kills >= 5
    assert length(results) == @callers

    for caller_results <- results do
      assert length(caller_results) == @calls_per_caller

      check_session(caller_results)

      for {expected, answer} <- caller_results do
        case {expected, answer} do
          {{:stream, items}, :ok} ->
            assert items == Enum.to_list(0..(@stream_items - 1))

          {{:stream, items}, {:error, %Error{category: category}}} ->
            assert category in @expected_errors

            assert items == Enum.take(0..(@stream_items - 1), length(items)),
                   "a prefix, in order: #{inspect(items)}"

          {:session, {:ok, %{"n" => _}}} ->
            :ok

          {:session, {:error, %Error{category: :worker, details: %{session_lost: true}}}} ->
            :ok

          {{:raises, message}, {:error, %Error{category: :python_error} = e}} ->
            assert e.message == message

          {_, {:ok, value}} ->
            assert value == expected

          {_, {:error, %Error{category: category}}} ->
            assert category in @expected_errors
        end
      end
    end

    answers = List.flatten(results)
    ok = Enum.count(answers, &match?({_, {:ok, _}}, &1))
    assert ok > length(answers) / 2

    :ok = Snakepit.await_ready(pool, 30_000)
    stats = Snakepit.get_stats(pool)
    assert stats.workers == pool_opts[:size] and stats.queued == 0 and stats.in_flight == 0
    # A kill can hit a worker already on its way out.
    assert stats.restarts >= div(kills, 2)
    # Every call was counted once, under the outcome its caller saw.
    assert_partition(stats)
    assert stats.requests == @callers * @calls_per_caller
    assert stats.sessions_lost > 0 and stats.chunks > 0, "kills hit sessions; streams ran"
    seen = Enum.frequencies_by(answers, &outcome/1)

    assert Map.take(stats, [:completed, :python_errors, :worker_errors, :timeouts]) == %{
             completed: Map.get(seen, :completed, 0),
             python_errors: Map.get(seen, :python_error, 0),
             worker_errors: Map.get(seen, :worker, 0),
             timeouts: Map.get(seen, :timeout, 0)
           }

    assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)

    assert offenders == []
  end

  # Each call echoes a value that names its caller and its number, so an
  # answer delivered to the wrong call cannot go unnoticed.
  defp caller(test, pool, c) do
    results =
      for i <- 1..@calls_per_caller do
        value = %{"caller" => c, "call" => i, "pad" => String.duplicate("x", rem(i * 37, 300))}

        case rem(i, 10) do
          0 ->
            {5, Snakepit.execute("sleep", %{ms: 5}, pool: pool)}

          1 ->
            {{:raises, "ValueError: m#{c}.#{i}"},
             Snakepit.execute("boom", %{message: "m#{c}.#{i}"}, pool: pool)}

          2 ->
            {300, Snakepit.execute("sleep", %{ms: 300}, pool: pool, timeout: 20)}

          3 ->
            {:session,
             Snakepit.execute_in_session("chaos-#{c}", "session_counter", %{}, pool: pool)}

          4 ->
            stream(pool)

          _ ->
            {value, Snakepit.execute("echo", %{value: value}, pool: pool, timeout: 10_000)}
        end
      end

    send(test, {:results, self(), results})

    receive do
      {:check, ^test} ->
        {:messages, messages} = Process.info(self(), :messages)
        send(test, {:mailbox, self(), messages})
    end
  end

  # A stream's chunks, gathered in the caller: {{:stream, items}, outcome}.
  defp stream(pool) do
    Process.put(:items, [])
    collect = fn item -> Process.put(:items, [item | Process.get(:items)]) end

    outcome =
      Snakepit.execute_stream("count_up", %{n: @stream_items}, collect, pool: pool, stream_window: 4)

    {{:stream, Enum.reverse(Process.delete(:items))}, outcome}
  end

  # A session's counter goes up by one per call, and starts again at 1 only
  # after a call was told that the session was lost.
  defp check_session(results) do
    Enum.reduce(results, 0, fn
      {:session, {:ok, %{"n" => n}}}, previous ->
        assert n == previous + 1, "session counter #{n} after #{previous}"
        n

      {:session, {:error, _}}, _previous ->
        0

      _, previous ->
        previous
    end)
  end

  defp kill_at_random(pool, kills) do
    receive do
      {:stop, test} -> send(test, {:kills, kills})
    after
      25 ->
        ready =
          for %{state: s, os_pid: p} <- Snakepit.list_workers(pool), s in [:idle, :busy], do: p

        case ready do
          [] ->
            kill_at_random(pool, kills)

          pids ->
            System.cmd("kill", ["-KILL", "#{Enum.random(pids)}"], stderr_to_stdout: true)
            kill_at_random(pool, kills + 1)
        end
    end
  end

  # Bounded: a stuck call must fail the test with what it was doing.
  defp await_results(caller, pool) do
    receive do
      {:results, ^caller, results} -> results
    after
      60_000 ->
        flunk(
          "caller #{inspect(caller)} is stuck in " <>
            inspect(Process.info(caller, :current_stacktrace)) <>
            "; pool: #{inspect(Snakepit.get_stats(pool))}"
        )
    end
  end

  defp outcome({_, :ok}), do: :completed
  defp outcome({_, {:ok, _}}), do: :completed
  defp outcome({_, {:error, %Error{category: category}}}), do: category

  defp idle?(pool) do
    stats = Snakepit.get_stats(pool)
    stats.queued == 0 and stats.in_flight == 0
  end
end
