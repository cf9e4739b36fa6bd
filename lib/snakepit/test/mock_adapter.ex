defmodule Snakepit.Test.MockAdapter do
  @moduledoc """
  An Elixir adapter for your tests: a pool that answers like a Python one,
  without Python.

      # test/test_helper.exs, or a test's setup
      start_supervised!({Snakepit.Pool, name: :ml, adapter: Snakepit.Test.MockAdapter, size: 2})

      {:ok, "pong"} = Snakepit.execute("ping", %{}, pool: :ml)

  Commands (args are a map; atom keys arrive as strings):

  - `"ping"`: `"pong"`;
  - `"echo"`: the `"value"` arg, as it would come back from Python (atom
    keys as strings, tuples as lists);
  - `"error"`: fails with a `:python_error` whose message is the
    `"message"` arg (`"simulated error"` by default);
  - `"slow"`: sleeps `"ms"` milliseconds (1000 by default), then returns
    them: for timeouts;
  - `"stream"`: streams the integers `0..n-1` (`"n"`, 3 by default);
  - `"session_counter"`: counts the calls of the call's session in this
    worker: `%{"n" => calls so far, "worker" => worker id}`.

  Any other command fails with a `:validation` error, as an unknown Python
  tool does. To fake your own tools, write a module like this one
  (`@behaviour Snakepit.Adapter`) and give it as the pool's `:adapter`.
  """

  @behaviour Snakepit.Adapter

  alias Snakepit.Error

  @impl true
  def init(_config), do: {:ok, :ets.new(__MODULE__, [:public])}

  @impl true
  def terminate(_reason, table), do: :ets.delete(table)

  @impl true
  def supports_streaming?, do: true

  @impl true
  def uses_grpc?, do: false

  @impl true
  def execute("ping", _args, _opts), do: {:ok, "pong"}
  def execute("echo", args, _opts), do: {:ok, Map.get(args, "value")}
  def execute("error", args, _opts), do: {:error, Map.get(args, "message", "simulated error")}

  def execute("slow", args, _opts) do
    ms = Map.get(args, "ms", 1000)
    Process.sleep(ms)
    {:ok, ms}
  end

  def execute("stream", args, _opts), do: {:ok, Enum.to_list(0..(Map.get(args, "n", 3) - 1))}

  def execute("session_counter", _args, opts) do
    case opts[:session_id] do
      nil ->
        {:error, Error.validation("session_counter needs a session")}

      id ->
        n = :ets.update_counter(opts[:state], id, 1, {id, 0})
        {:ok, %{"n" => n, "worker" => opts[:worker_id]}}
    end
  end

  def execute(command, _args, _opts) do
    {:error,
     Error.validation("unknown tool #{inspect(command)}", %{tool: command, kind: "unknown_tool"})}
  end

  @impl true
  def execute_stream("stream", args, emit, _opts) do
    for i <- 0..(Map.get(args, "n", 3) - 1)//1, do: emit.(i)
    :ok
  end

  def execute_stream(command, args, emit, opts) do
    with {:ok, value} <- execute(command, args, opts) do
      emit.(value)
      :ok
    end
  end
end
