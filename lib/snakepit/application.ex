defmodule Snakepit.Application do
  @moduledoc false
  # Starts the pool registry and the pools listed in
  # `config :snakepit, pools: [name: [opts...]]`.
  use Application
  require Logger

  @impl true
  def start(_type, _args) do
    reap_orphans()

    pools =
      for {name, opts} <- Application.get_env(:snakepit, :pools, []) do
        {Snakepit.Pool, Keyword.put(opts, :name, name)}
      end

    children = [{Registry, keys: :unique, name: Snakepit.Registry} | pools]
    Supervisor.start_link(children, strategy: :one_for_one, name: Snakepit.Supervisor)
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
