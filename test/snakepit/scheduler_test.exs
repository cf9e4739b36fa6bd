defmodule Snakepit.SchedulerTest do
  # No NIF call may hold a normal scheduler: large frames are written by the
  # worker's writer thread, large args are encoded on a dirty scheduler, and
  # spawning runs on a dirty I/O scheduler. The VM reports any process that
  # keeps a scheduler for more than 5 ms; none of those reports may name the NIF.
  # Not async: the system monitor is global to the VM.
  use ExUnit.Case, async: false

  alias Snakepit.TestPools

  test "large payloads, many callers, pool start and stop: no long schedule in a NIF" do
    previous = :erlang.system_monitor(self(), [{:long_schedule, 5}])

    try do
      opts = TestPools.opts(size: 2)
      start_supervised!({Snakepit.Pool, opts}, id: :sched_pool)
      pool = opts[:name]
      :ok = Snakepit.await_ready(pool, 30_000)

      big = :crypto.strong_rand_bytes(4_000_000)
      nested = Map.new(1..20_000, &{"key#{&1}", [&1, "v#{&1}", &1 * 1.5]})

      1..16
      |> Task.async_stream(
        fn i ->
          case rem(i, 4) do
            0 -> {:ok, ^big} = Snakepit.execute("echo", %{value: big}, pool: pool)
            1 -> {:ok, _} = Snakepit.execute("make_bytes", %{n: 4_000_000}, pool: pool)
            2 -> {:ok, ^nested} = Snakepit.execute("echo", %{value: nested}, pool: pool)
            3 -> for _ <- 1..200, do: {:ok, 1} = Snakepit.execute("echo", %{value: 1}, pool: pool)
          end
        end,
        max_concurrency: 8,
        timeout: 60_000
      )
      |> Stream.run()

      :ok = stop_supervised(:sched_pool)
    after
      restore(previous)
    end

    offenders =
      collect_long_schedules()
      |> Enum.filter(fn info -> inspect(info) =~ "Snakepit.Native" end)

    assert offenders == []
  end

  defp restore(:undefined), do: :erlang.system_monitor(:undefined)
  defp restore({pid, opts}), do: :erlang.system_monitor(pid, opts)

  defp collect_long_schedules(acc \\ []) do
    receive do
      {:monitor, _who, :long_schedule, info} -> collect_long_schedules([info | acc])
    after
      0 -> acc
    end
  end
end
