defmodule Snakepit.Adversarial.FrameMemoryTest do
  # A length prefix reserves no more memory than the bytes that follow it: a
  # worker that announces 60 MiB, sends 1 MiB and stalls pins a few MiB of
  # the BEAM's memory, not 60.
  # Not async: it reads the VM's binary memory, which other tests move.
  use ExUnit.Case, async: false
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  @fake Path.expand("../support/python/fake_worker.py", __DIR__)

  test "a worker that announces a huge frame and stalls does not pin its size" do
    marker = Path.join(tmp_dir("stall_big"), "sent")

    pool =
      start_pool(
        size: 1,
        python: @fake,
        max_frame_bytes: 100 * 1024 * 1024,
        env: %{"FAKE_WORKER_MODE" => "stall_big", "FAKE_WORKER_MARKER" => marker}
      )

    :erlang.garbage_collect()
    before = :erlang.memory(:binary)
    call = Task.async(fn -> Snakepit.execute("break", %{}, pool: pool, timeout: 20_000) end)
    # The worker wrote 1 MiB after the header: the host has read it.
    wait_until(fn -> File.exists?(marker) end, 10_000)
    grown = :erlang.memory(:binary) - before
    assert grown < 16 * 1024 * 1024, "a 60 MiB header pinned #{div(grown, 1024 * 1024)} MiB"

    [%{os_pid: os_pid}] = Snakepit.list_workers(pool)
    System.cmd("kill", ["-KILL", "#{os_pid}"])
    assert {:error, %Error{category: :worker}} = Task.await(call, 20_000)
  end
end
