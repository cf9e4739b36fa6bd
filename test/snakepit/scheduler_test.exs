defmodule Snakepit.SchedulerTest do
  # No NIF call may hold a normal scheduler: large frames are written by the
  # worker's writer thread, large args are encoded on a dirty scheduler, and
  # spawning runs on a dirty I/O scheduler. The VM reports any process that
  # keeps a scheduler for more than 5 ms; none of those reports may name the NIF.
  # Not async: the system monitor is global to the VM.
  use ExUnit.Case, async: false

  alias Snakepit.TestPools

  test "large payloads, many callers, pool start and stop: no long schedule in a NIF" do
    {:ok, offenders} =
      TestPools.nif_long_schedules(fn ->
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
      end)

    assert offenders == []
  end
end
