defmodule Snakepit.StatusTest do
  # `mix snakepit.status`: locally (the demo pool started for the report)
  # and against a running node (a separate BEAM reached by distribution).
  use ExUnit.Case, async: true
  import ExUnit.CaptureIO

  alias Mix.Tasks.Snakepit.Status
  alias Snakepit.TestPools

  @root Path.expand("../..", __DIR__)

  # A worker row: id, os pid, state, running, in flight, requests, age, rss, sessions.
  @row ~r/^\s+(\d+)\s+(\d+)\s+(idle|busy|starting|stopping)\s+(\d+)\s+(\d+)\s+(\d+)\s+(.+?)\s+([\d.]+ [KMG]iB|-)\s+(\d+)$/m

  test "without --node, starts the demo pool, prints its workers, and stops it" do
    output = capture_io(fn -> Mix.Task.rerun("snakepit.status", []) end)

    assert output =~ "No pools in config :snakepit: starting a pool of the bundled demo adapter"

    assert output =~
             ~r/^pool :demo: (\d+) workers? \(\1 idle, 0 busy, 0 starting, 0 stopping\), 0 queued/m

    assert output =~
             ~r/^  worker  os pid  state  running  in flight  requests  age +rss +sessions$/m

    rows = Regex.scan(@row, output)
    assert length(rows) == System.schedulers_online()
    assert Enum.map(rows, &Enum.at(&1, 1)) == Enum.map(1..length(rows), &Integer.to_string/1)

    # The workers were stopped with the pool.
    for [_, _id, os_pid | _] <- rows do
      TestPools.wait_until(fn -> not TestPools.os_alive?(String.to_integer(os_pid)) end)
    end

    assert output =~ "requests 0: completed 0, python errors 0"
    assert output =~ ~r/^    queue  -    -    -$/m
    assert output =~ "(started here for this report, all workers ready in"
  end

  test "--pool selects pools, and an unknown one is refused" do
    capture_io(fn ->
      assert_raise Mix.Error, "no pool named nope; pools: :demo", fn ->
        Mix.Task.rerun("snakepit.status", ["--pool", "nope"])
      end
    end)
  end

  test "a real pool's report: worker rows, outcomes and latency when the stats have it" do
    opts = TestPools.opts(size: 2)
    start_supervised!({Snakepit.Pool, opts})
    pool = opts[:name]
    :ok = Snakepit.await_ready(pool)

    for i <- 1..5, do: {:ok, _} = Snakepit.execute("echo", %{value: i}, pool: pool)
    {:error, _} = Snakepit.execute("no_such_tool", %{}, pool: pool)
    {:error, _} = Snakepit.execute("boom", %{message: "boom"}, pool: pool)

    status = Status.collect(pool, &apply/3)
    text = Status.format_pool(status)

    assert text =~ "pool #{inspect(pool)}: 2 workers (2 idle, 0 busy"
    rows = Regex.scan(@row, text)
    assert length(rows) == 2
    requests = rows |> Enum.map(&String.to_integer(Enum.at(&1, 6))) |> Enum.sum()
    # The unknown tool was refused by a worker: it counts as served.
    assert requests == 7

    assert text =~ "requests 7: completed 5, python errors 1, validation errors 1"
    assert text =~ "restarts 0, recycles 0, requeued 0, sessions 0 (expired 0, lost 0)"
    # The pool's own percentiles, in units.
    assert text =~ ~r/^    run    [\d.]+ (µs|ms)/m

    # Without percentiles (no call yet): dashes.
    none = %{queue: %{p50: nil, p95: nil, p99: nil}, run: %{p50: nil, p95: nil, p99: nil}}
    text = Status.format_pool(put_in(status, [:stats, :latency], none))
    assert text =~ ~r/^  latency  p50  p95  p99\n    queue  -    -    -\n    run    -    -    -$/m

    # With latency percentiles (microseconds), as get_stats/1 will have them.
    latency = %{queue: %{p50: 3, p95: 11.6, p99: 40}, run: %{p50: 52, p95: 1_250, p99: 2_500_000}}
    text = Status.format_pool(put_in(status, [:stats, :latency], latency))

    assert text =~ ~r/^  latency  p50    p95     p99$/m
    assert text =~ ~r/^    queue  3 µs   12 µs   40 µs$/m
    assert text =~ ~r/^    run    52 µs  1\.3 ms  2\.50 s$/m
  end

  test "a pool that is gone is reported as such" do
    assert Status.format_pool(Status.collect(:no_such_pool, &apply/3)) ==
             "pool :no_such_pool: no pool named :no_such_pool is running"
  end

  test "units" do
    assert Enum.map([nil, 850, 12_400, 184_000, 7_500_000, 200_000_000], &Status.age/1) ==
             ["-", "850 ms", "12s", "3m 04s", "2h 05m", "2d 07h"]

    assert Enum.map([nil, 812, 4096, 25_270_000, 3_000_000_000], &Status.bytes/1) ==
             ["-", "812 B", "4.0 KiB", "24.1 MiB", "2.79 GiB"]
  end

  @tag timeout: 120_000
  test "--node reads a running node's pools over distribution" do
    cookie = "snakepit_status_test_#{System.unique_integer([:positive])}"
    name = "snakepit_status_target_#{System.unique_integer([:positive])}"

    # The node: Snakepit's application and a pool with some traffic. It
    # stops when its stdin closes (the port closing).
    script = """
    {:ok, _} = Application.ensure_all_started(:snakepit)
    {:ok, _} = Snakepit.Pool.start_link(name: :remote_demo, size: 2, adapter: "snakepit_bridge.examples.demo.DemoAdapter")
    :ok = Snakepit.await_ready(:remote_demo)
    for i <- 1..20, do: {:ok, _} = Snakepit.execute("add", %{a: i, b: 1}, pool: :remote_demo)
    {:error, _} = Snakepit.execute("nope", %{}, pool: :remote_demo)
    id = Snakepit.new_session_id()
    {:ok, _} = Snakepit.execute_in_session(id, "remember", %{key: "k", value: 1}, pool: :remote_demo)
    IO.puts("ready " <> Atom.to_string(node()))
    IO.read(:stdio, :line)
    """

    ebin = Path.dirname(:code.which(Snakepit))

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        line: 4096,
        args: ["--sname", name, "--cookie", cookie, "-pa", ebin, "-e", script]
      ])

    target = await_ready(port, "")

    try do
      {output, status} =
        System.cmd("mix", ["snakepit.status", "--node", target, "--cookie", cookie],
          cd: @root,
          env: [{"MIX_ENV", "test"}],
          stderr_to_stdout: true
        )

      assert status == 0, output
      assert output =~ "Node #{target}: 1 pool"
      assert output =~ "pool :remote_demo: 2 workers (2 idle, 0 busy"
      assert length(Regex.scan(@row, output)) == 2
      assert output =~ "requests 22: completed 21, python errors 0, validation errors 1"
      assert output =~ "sessions 1 (expired 0, lost 0)"

      {output, status} =
        System.cmd("mix", ["snakepit.status", "--node", target, "--cookie", "wrong"],
          cd: @root,
          env: [{"MIX_ENV", "test"}],
          stderr_to_stdout: true
        )

      assert status == 1
      assert output =~ "it is running but refused the connection. Is --cookie its cookie?"
    after
      Port.close(port)
    end
  end

  defp await_ready(port, seen) do
    receive do
      {^port, {:data, {:eol, "ready " <> node}}} -> node
      {^port, {:data, {_, line}}} -> await_ready(port, seen <> line <> "\n")
      {^port, {:exit_status, status}} -> flunk("the node exited (#{status}):\n" <> seen)
    after
      60_000 -> flunk("the node was not ready within 60 s:\n" <> seen)
    end
  end
end
