defmodule Bench.PortPool do
  @moduledoc false
  # The baseline a user could write by hand: one GenServer per Python worker,
  # owning an Elixir Port with {:packet, 4}, speaking Snakepit's frames to the
  # same `python3 -m snakepit_bridge` process. Requests are pipelined: each
  # server writes a call as soon as it gets it and matches answers by id.
  use GenServer
  alias Bench.Msgpack

  def start(adapter, env), do: GenServer.start(__MODULE__, {adapter, env})

  def call(server, tool, args, timeout \\ 60_000),
    do: GenServer.call(server, {:call, tool, args}, timeout)

  @impl true
  def init({adapter, env}) do
    python = System.find_executable("python3")

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:packet, 4},
        :exit_status,
        args: ["-m", "snakepit_bridge", "--adapter", adapter],
        env: Enum.map(env, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
      ])

    receive do
      {^port, {:data, data}} -> ["ready", 0, _] = Msgpack.decode(data)
    after
      10_000 -> raise "port worker did not start"
    end

    {:ok, %{port: port, next: 1, pending: %{}}}
  end

  @impl true
  def handle_call({:call, tool, args}, from, %{port: port, next: id} = s) do
    frame = Msgpack.encode(["call", id, %{"tool" => tool, "session_id" => nil, "args" => args}])
    true = Port.command(port, frame)
    {:noreply, %{s | next: id + 1, pending: Map.put(s.pending, id, from)}}
  end

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = s) do
    case Msgpack.decode(data) do
      [kind, id, body] when kind in ["result", "error"] ->
        {from, pending} = Map.pop(s.pending, id)
        GenServer.reply(from, if(kind == "result", do: {:ok, body}, else: {:error, body}))
        {:noreply, %{s | pending: pending}}

      _log ->
        {:noreply, s}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = s),
    do: {:stop, {:worker_exit, status}, s}
end
