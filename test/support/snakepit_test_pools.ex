defmodule Snakepit.TestPools do
  @moduledoc false
  # Options for pools running the test adapters in test/support/python.

  @python_dir Path.expand("python", __DIR__)
  @hostile Path.expand("hostile_worker.py", __DIR__)

  def opts(extra \\ []) do
    Keyword.merge(
      [
        name: :"test_pool_#{System.unique_integer([:positive])}",
        size: 2,
        adapter: "snakepit_test_adapters.TestAdapter",
        python_path: [@python_dir]
      ],
      extra
    )
  end

  @doc """
  Options for a pool of `test/support/hostile_worker.py` workers (they do
  not read the control pipe, so heartbeats are off).
  """
  def hostile_opts(extra \\ []) do
    opts(
      [size: 1, python: @hostile, adapter: "hostile.Worker", heartbeat_interval: :infinity] ++
        extra
    )
  end

  @doc """
  Polls `fun` every 10 ms until it returns true, for conditions that send no
  message (OS processes, pool counters). Fails after `timeout` ms, with the
  message `failure.()` builds then (so it can show the value that was
  awaited). The one polling loop of the tests: use it rather than a sleep.
  """
  def wait_until(fun, timeout \\ 5_000, failure \\ nil) do
    failure = failure || fn -> "condition not met within #{timeout} ms" end
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait(fun, deadline, failure)
  end

  defp do_wait(fun, deadline, failure) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        ExUnit.Assertions.flunk(failure.())

      true ->
        Process.sleep(10)
        do_wait(fun, deadline, failure)
    end
  end

  @doc """
  A gate for the `block_until` test tool: `{path, release}` where calls of
  `block_until(path)` return once `release.()` has been called.
  """
  def gate do
    path = Path.join(System.tmp_dir!(), "snakepit_gate_#{System.unique_integer([:positive])}")
    ExUnit.Callbacks.on_exit(fn -> File.rm(path) end)
    {path, fn -> File.write!(path, "") end}
  end

  defmodule Occupied do
    @moduledoc false
    # What `Snakepit.TestPools.occupy/2` returns.
    @enforce_keys [:pool, :tasks, :release]
    defstruct @enforce_keys
  end

  @doc """
  Occupies `pool` with `n` calls of the `block_until` tool behind one gate,
  and returns once the pool shows all `n` in flight: written to workers,
  none left in the queue (so with `pipeline_depth: 1`, `n` busy workers, as
  the pool dispatches to idle workers first). Fails if that does not happen
  within 5 s: `n` must fit in the pool, and no other call of the test may
  be in flight.

  Returns `%Snakepit.TestPools.Occupied{tasks: tasks, release: release}`:
  `release.()` opens the gate (from any process); `await_occupied/2` awaits
  the calls' answers, `{:ok, "released"}` each once the gate is open. The
  tasks are linked to the caller (the test process).
  """
  def occupy(pool, n \\ 1) when is_integer(n) and n > 0 do
    {gate, release} = gate()

    tasks =
      for _ <- 1..n do
        Task.async(fn -> Snakepit.execute("block_until", %{path: gate}, pool: pool) end)
      end

    wait_until(
      fn -> match?(%{in_flight: ^n, queued: 0}, Snakepit.get_stats(pool)) end,
      5_000,
      fn -> "the pool never showed #{n} calls in flight: #{inspect(Snakepit.get_stats(pool))}" end
    )

    %Occupied{pool: pool, tasks: tasks, release: release}
  end

  @doc "The answers of an `occupy/2`'s calls, in order (see `occupy/2`)."
  def await_occupied(%Occupied{tasks: tasks}, timeout \\ 5_000),
    do: Enum.map(tasks, &Task.await(&1, timeout))

  @doc """
  Calls answered so far by the pool's current workers: the sum of their
  `:requests` in `Snakepit.list_workers/1`. It counts every answer a worker
  sent, including late ones that were dropped because their caller had
  timed out, and nothing that never reached a worker.
  """
  def served(pool), do: pool |> Snakepit.list_workers() |> Enum.map(& &1.requests) |> Enum.sum()

  @doc """
  Fails if an answer of a call is in the test process's mailbox: the NIF
  answers a caller with `{tag, status, frame, offset, meta}` (a stream's
  chunks are `{tag, :chunk, frame, offset}`) or
  `{tag, :error, reason}`, `tag` a reference, and `Snakepit.execute/3`
  takes its own. One left there is a late answer that was delivered.
  """
  def refute_stray_answers do
    {:messages, messages} = Process.info(self(), :messages)

    stray =
      Enum.filter(messages, fn
        {tag, _, _, _, _} when is_reference(tag) -> true
        {tag, _, _, _} when is_reference(tag) -> true
        {tag, :error, _} when is_reference(tag) -> true
        _ -> false
      end)

    ExUnit.Assertions.assert(stray == [], "answers left in the mailbox: #{inspect(stray)}")
  end

  def os_alive?(os_pid), do: File.exists?("/proc/#{os_pid}") and not zombie?(os_pid)

  defp zombie?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ") |> List.last() |> String.starts_with?("Z")
      _ -> false
    end
  end

  @doc "A fresh directory, removed when the test ends."
  def tmp_dir(name) do
    dir = Path.join(System.tmp_dir!(), "#{name}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  @doc """
  A fresh virtualenv (`python3 -m venv --without-pip`), removed when the
  test ends. `system_site_packages: true` lets it see the system's
  packages (msgpack among them). Returns `{dir, its site-packages}`.
  """
  def venv(name, opts \\ []) do
    dir = tmp_dir(name)
    system = if opts[:system_site_packages], do: ["--system-site-packages"], else: []

    {out, status} =
      System.cmd("python3", ["-m", "venv", "--without-pip"] ++ system ++ [dir],
        stderr_to_stdout: true
      )

    if status != 0, do: ExUnit.Assertions.flunk("python3 -m venv failed: #{out}")
    [site] = Path.wildcard(Path.join(dir, "lib/python3*/site-packages"))
    {dir, site}
  end

  @doc """
  Snakepit's compiled code (test support included) laid out as an app in a
  temp dir, for a separate `elixir -pa ebin`: its priv/ is a link to the real
  one, or empty. Returns `{lib_dir, ebin}`.
  """
  def snakepit_app(name, priv) do
    lib = tmp_dir(name)
    ebin = Path.join(lib, "snakepit/ebin")
    File.mkdir_p!(ebin)
    File.cp_r!(Path.dirname(:code.which(Snakepit)), ebin)
    root = Path.expand("../..", __DIR__)

    case priv do
      :real_priv -> File.ln_s!(Path.join(root, "priv"), Path.join(lib, "snakepit/priv"))
      :empty_priv -> File.mkdir_p!(Path.join(lib, "snakepit/priv"))
    end

    {lib, ebin}
  end

  @doc """
  Runs `script` in a separate `elixir -pa ebin` OS process and waits (up to
  60 s) for the line it prints starting with `RUN `. Returns `{port, words}`:
  the port (it sends `{port, {:exit_status, _}}` when that BEAM ends) and the
  line's words after `RUN`. Fails the test if the BEAM exits first.
  """
  def run_beam(ebin, script) do
    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: ["-pa", ebin, "-e", script]
      ])

    {port, await_run_line(port)}
  end

  defp await_run_line(port) do
    receive do
      {^port, {:data, {:eol, "RUN " <> rest}}} ->
        String.split(rest)

      {^port, {:data, _other}} ->
        await_run_line(port)

      {^port, {:exit_status, status}} ->
        ExUnit.Assertions.flunk("the separate BEAM exited with status #{status}")
    after
      60_000 -> ExUnit.Assertions.flunk("the separate BEAM did not report its run")
    end
  end

  @doc "Starts a pool of the test adapter under the test's supervisor; returns its name."
  def start_pool(extra) do
    opts = opts(extra)
    ExUnit.Callbacks.start_supervised!({Snakepit.Pool, opts})
    :ok = Snakepit.await_ready(opts[:name], 30_000)
    opts[:name]
  end

  def os_pids(pool), do: pool |> Snakepit.list_workers() |> Enum.map(& &1.os_pid)

  @doc """
  Runs `fun` while the VM reports every process that keeps a scheduler for
  more than 5 ms. Returns `{fun's result, the reports that name the NIF}`.
  The monitor is global to the VM: only for `async: false` tests.
  """
  def nif_long_schedules(fun) do
    previous = :erlang.system_monitor(self(), [{:long_schedule, 5}])

    result =
      try do
        fun.()
      after
        restore_monitor(previous)
      end

    offenders =
      collect_long_schedules([])
      |> Enum.filter(fn info -> inspect(info) =~ "Snakepit.Native" end)

    {result, offenders}
  end

  defp restore_monitor(:undefined), do: :erlang.system_monitor(:undefined)
  defp restore_monitor({pid, opts}), do: :erlang.system_monitor(pid, opts)

  defp collect_long_schedules(acc) do
    receive do
      {:monitor, _who, :long_schedule, info} -> collect_long_schedules([info | acc])
    after
      0 -> acc
    end
  end

  @doc """
  Asserts that a pool's outcome counters partition its requests: each
  request counted once, under one outcome, or still queued or in flight.
  """
  def assert_partition(stats) do
    outcomes =
      stats.completed + stats.python_errors + stats.validation_errors + stats.worker_errors +
        stats.transport_errors + stats.timeouts + stats.queue_timeouts + stats.cancelled +
        stats.rejected + stats.stopped

    ExUnit.Assertions.assert(
      stats.requests == outcomes + stats.queued + stats.in_flight,
      "requests are not partitioned by outcome: #{inspect(stats)}"
    )
  end
end
