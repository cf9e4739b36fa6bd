defmodule Snakepit.OrphansTest do
  # No worker process outlives its BEAM, and leftovers of a dead BEAM are
  # found and killed, never those of a live one. Runs a separate `elixir`.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Orphans

  @python_dir Path.expand("../support/python", __DIR__)

  @tag timeout: 120_000
  test "a BEAM killed with SIGKILL leaves no process of its run, grandchildren included" do
    {_lib, ebin} = snakepit_app("snakepit_killed_beam", :real_priv)

    script = """
    {:ok, _} = Application.ensure_all_started(:snakepit)
    {:ok, _} = Snakepit.Pool.start_link(name: :doomed, size: 2,
      adapter: "snakepit_test_adapters.TestAdapter", python_path: [#{inspect(@python_dir)}])
    :ok = Snakepit.await_ready(:doomed, 30_000)
    kids = for _ <- 1..2, do: Snakepit.execute!("spawn_children", %{}, pool: :doomed)
    workers = Enum.map(Snakepit.list_workers(:doomed), & &1.os_pid)
    IO.puts("RUN \#{System.pid()} \#{Snakepit.Orphans.mark()} \#{Enum.join(workers ++ List.flatten(kids), ",")}")
    Process.sleep(:infinity)
    """

    {port, [beam, mark, pids]} = run_beam(ebin, script)
    pids = pids |> String.split(",") |> Enum.map(&String.to_integer/1)
    # If an assertion fails before the kill, don't leave that BEAM running.
    on_exit(fn -> System.cmd("kill", ["-KILL", beam], stderr_to_stdout: true) end)
    assert length(pids) == 6
    assert Enum.all?(pids, &os_alive?/1)
    # Shepherds, workers, the sleep children and the setsid daemons.
    assert length(Orphans.processes(mark)) == 8

    {_, 0} = System.cmd("kill", ["-KILL", beam])
    assert_receive {^port, {:exit_status, _}}, 10_000

    wait_until(fn -> Orphans.processes(mark) == [] end)
    Enum.each(pids, &refute(os_alive?(&1)))
  end

  test "reap/0 kills marked processes of a dead BEAM and spares those of live ones" do
    dead_owner = start_marked("999999999.1")
    live_owner = start_marked("#{dead_owner}.#{start_time(dead_owner)}")
    mine = start_marked(Orphans.mark())
    on_exit(fn -> System.cmd("kill", ["-KILL", "#{live_owner}", "#{mine}"]) end)

    killed = Orphans.reap()
    assert dead_owner in killed
    refute live_owner in killed or mine in killed
    wait_until(fn -> not os_alive?(dead_owner) end)
    assert os_alive?(live_owner) and os_alive?(mine)
  end

  # A detached `sleep` carrying `mark`, as a leftover worker would. Returned
  # once it runs `sleep`: while the forked shell is still exec'ing it, its
  # /proc/<pid>/environ can read empty, and reap/0 would not see the mark.
  defp start_marked(mark) do
    {out, 0} =
      System.cmd("sh", ["-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
        env: [{"SNAKEPIT_OWNER", mark}]
      )

    os_pid = String.to_integer(String.trim(out))
    wait_until(fn -> match?({:ok, "sleep" <> _}, File.read("/proc/#{os_pid}/cmdline")) end)
    os_pid
  end

  defp start_time(os_pid) do
    [_, rest] = String.split(File.read!("/proc/#{os_pid}/stat"), ") ")
    rest |> String.split() |> Enum.at(19)
  end
end
