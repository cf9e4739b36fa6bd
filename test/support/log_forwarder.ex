defmodule Snakepit.TestLogForwarder do
  @moduledoc false
  # A :logger handler that sends each log event to a test process as
  # {:log, level, message} (and {:log_meta, level, message, metadata}), so
  # tests can await log lines instead of sleeping.

  def attach(pid) do
    id = :"snakepit_test_log_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, __MODULE__, %{config: %{pid: pid}})
    id
  end

  def detach(id), do: :logger.remove_handler(id)

  def log(%{level: level, msg: msg, meta: meta}, %{config: %{pid: pid}}) do
    send(pid, {:log, level, text(msg)})
    send(pid, {:log_meta, level, text(msg), meta})
  end

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({:report, report}), do: inspect(report)
  defp text({format, args}), do: format |> :io_lib.format(args) |> IO.chardata_to_string()
end
