defmodule Snakepit.TestPools do
  @moduledoc false
  # Options for pools running the test adapters in test/support/python.

  @python_dir Path.expand("python", __DIR__)

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
  Polls `fun` every 10 ms until it returns true, for conditions that send no
  message (OS processes, pool counters). Fails after `timeout` ms.
  """
  def wait_until(fun, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait(fun, deadline, timeout)
  end

  defp do_wait(fun, deadline, timeout) do
    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        ExUnit.Assertions.flunk("condition not met within #{timeout} ms")

      true ->
        Process.sleep(10)
        do_wait(fun, deadline, timeout)
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
