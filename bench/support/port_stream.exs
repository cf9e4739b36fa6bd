defmodule Bench.PortStream do
  @moduledoc false
  # The streaming baseline a user could write by hand: an Elixir Port with
  # {:packet, 4} to bench/support/python/port_stream_worker.py, which pushes
  # every chunk as fast as it can (no credits). The process that opened the
  # port receives the chunks straight from it and decodes each (no GenServer
  # in between: the cheapest a Port stream gets).
  alias Bench.Msgpack

  def open(python_path) do
    python = System.find_executable("python3")
    script = Path.join(Path.expand("python", __DIR__), "port_stream_worker.py")

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:packet, 4},
        :exit_status,
        args: [script],
        env: [{~c"PYTHONPATH", String.to_charlist(Enum.join(python_path, ":"))}]
      ])

    receive do
      {^port, {:data, data}} -> ["ready", 0, _] = Msgpack.decode(data)
    after
      30_000 -> raise "the port stream worker did not start"
    end

    port
  end

  def os_pid(port), do: port |> Port.info(:os_pid) |> elem(1)

  # Asks for `n` chunks of `size` bytes (n = 0: forever).
  def request(port, id, n, size) do
    true = Port.command(port, Msgpack.encode(["stream", id, %{"n" => n, "size" => size}]))
    :ok
  end

  # Like Enum.reduce/3 over the chunks of request `id`, up to its `done`.
  def reduce(port, id, acc, fun) do
    receive do
      {^port, {:data, data}} ->
        case Msgpack.decode(data) do
          ["chunk", ^id, chunk] -> reduce(port, id, fun.(chunk, acc), fun)
          ["done", ^id, nil] -> acc
        end

      {^port, {:exit_status, status}} ->
        raise "the port stream worker exited with status #{status}"
    end
  end

  def stream(port, id, n, size, acc, fun) do
    :ok = request(port, id, n, size)
    reduce(port, id, acc, fun)
  end
end
