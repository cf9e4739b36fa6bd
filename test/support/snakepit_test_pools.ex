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
end
