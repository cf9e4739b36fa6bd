defmodule Snakepit.Application do
  @moduledoc false
  # Starts the pool registry and the pools of `config :snakepit` (both forms,
  # see "Application configuration" in Snakepit.Config). A configuration it
  # cannot honour stops the start: a key that is silently ignored is a pool
  # that silently does not exist, found out at the first call.
  use Application
  require Logger

  @impl true
  def start(_type, _args) do
    case Snakepit.Config.pools_from_env(Application.get_all_env(:snakepit)) do
      {:ok, pools} ->
        _ = Snakepit.Telemetry.refresh()
        reap_orphans()
        children = [{Registry, keys: :unique, name: Snakepit.Registry}]
        children = children ++ for {_name, opts} <- pools, do: {Snakepit.Pool, opts}
        Supervisor.start_link(children, strategy: :one_for_one, name: Snakepit.Supervisor)

      {:error, error} ->
        # The application controller shows the reason only inspected, with
        # its newlines escaped: the message is logged here to be readable.
        Logger.error("[snakepit] not started: invalid configuration:\n" <> error.message)
        {:error, error}
    end
  end

  defp reap_orphans do
    if Snakepit.Native.status() == :ok do
      case Snakepit.Orphans.reap() do
        [] ->
          :ok

        pids ->
          Logger.warning(
            "[snakepit] killed #{length(pids)} worker processes left by a BEAM that is gone: " <>
              inspect(pids)
          )
      end
    end
  end
end
