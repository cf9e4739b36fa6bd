defmodule Snakepit.Application do
  @moduledoc false
  # Starts the pool registry and the pools listed in
  # `config :snakepit, pools: [name: [opts...]]`.
  use Application

  @impl true
  def start(_type, _args) do
    pools =
      for {name, opts} <- Application.get_env(:snakepit, :pools, []) do
        {Snakepit.Pool, Keyword.put(opts, :name, name)}
      end

    children = [{Registry, keys: :unique, name: Snakepit.Registry} | pools]
    Supervisor.start_link(children, strategy: :one_for_one, name: Snakepit.Supervisor)
  end
end
