defmodule Snakepit.Adversarial.OutputFloodTest do
  # A worker that floods stderr or Python logging cannot fill the BEAM's
  # memory or stall the pool: output past its budget is dropped, counted,
  # and reported in one warning.
  # Not async: it measures the VM's memory, which other tests move.
  use ExUnit.Case, async: false
  @moduletag :capture_log
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  test "200 MB on stderr: memory stays bounded and the pool answers at once after" do
    pool = start_pool(size: 1)
    :erlang.garbage_collect()
    before = :erlang.memory(:total)
    peak = start_memory_watch()

    log =
      capture_log(fn ->
        assert {:ok, _} = Snakepit.execute("flood_stderr", %{mb: 200}, pool: pool, timeout: 120_000)
        {us, :ok} = :timer.tc(fn -> Snakepit.await_ready(pool, 1_000) end)
        assert us < 1_000_000
        assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool, timeout: 1_000)
        # Flush the pool's mailbox through a call it answers in order.
        :ok = Snakepit.await_ready(pool, 5_000)
      end)

    grown = stop_memory_watch(peak) - before
    assert grown < 100 * 1024 * 1024, "memory grew #{div(grown, 1024 * 1024)} MiB"
    stats = Snakepit.get_stats(pool)
    assert stats.dropped_output_lines > 1_000_000
    assert log =~ "writes output faster than it can be logged"
    assert log =~ "ffffffffff"
  end

  test "a Python log flood is bounded the same way" do
    pool = start_pool(size: 1)

    log =
      capture_log(fn ->
        assert {:ok, 100_000} =
                 Snakepit.execute("flood_log", %{records: 100_000}, pool: pool, timeout: 60_000)

        :ok = Snakepit.await_ready(pool, 5_000)
      end)

    stats = Snakepit.get_stats(pool)
    assert stats.dropped_output_lines > 50_000
    assert log =~ "flood 0"
    assert log =~ "dropped"
  end

  # Samples the VM's total memory every 10 ms; returns the peak when stopped.
  defp start_memory_watch do
    parent = self()

    spawn_link(fn ->
      watch = fn watch, peak ->
        receive do
          :stop -> send(parent, {:peak, peak})
        after
          10 -> watch.(watch, max(peak, :erlang.memory(:total)))
        end
      end

      watch.(watch, :erlang.memory(:total))
    end)
  end

  defp stop_memory_watch(watcher) do
    send(watcher, :stop)
    assert_receive {:peak, peak}, 5_000
    peak
  end
end
