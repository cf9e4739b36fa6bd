defmodule Snakepit.Adapter do
  @moduledoc """
  A pool served by an Elixir module instead of Python workers.

  Give the module as the pool's `:adapter` and the pool runs `:size`
  workers as BEAM processes, each with the state `init/1` returned, behind
  the same API as a Python pool: `Snakepit.execute/3`,
  `Snakepit.execute_stream/4` and `Snakepit.stream/3`, sessions (a
  session's calls go to one worker, in order), `:timeout` and
  `:queue_timeout`, `:retry`, telemetry, and `%Snakepit.Error{}` results.
  Values cross as they would to and from Python (the same codec: atom keys
  become strings, tuples lists), so code tested against an Elixir adapter
  sees what it will see from Python. `Snakepit.Test.MockAdapter` is one,
  for tests:

      {Snakepit.Pool, name: :fake_ml, adapter: Snakepit.Test.MockAdapter, size: 2}

      {:ok, "pong"} = Snakepit.execute("ping", %{}, pool: :fake_ml)

  See `Snakepit.BeamPool` for how such a pool runs, and what of a Python
  pool it does not have (no OS processes: no recycling, heartbeats or
  shared memory).

  ## Callbacks

  `execute/3` runs a command: `{:ok, value}` answers the call;
  `{:error, %Snakepit.Error{}}` fails it with that error; `{:error,
  reason}` fails it with a `:python_error` whose message is the reason (as
  a Python tool that raised); a raise, exit or throw does the same, with
  the Elixir stacktrace as the traceback. `opts` has `:state` (what `init/1`
  returned), `:session_id` (nil outside a session), `:worker_id` and
  `:correlation_id`.

  `execute_stream/4` streams: it calls `emit` once per item (which blocks
  while the consumer is `:stream_window` items behind) and returns `:ok`
  or `{:error, _}` as `execute/3`. Without it, a streaming call gets the
  value of `execute/3` as its one item.
  """

  @typedoc "What `execute/3` and `execute_stream/4` get besides the args."
  @type opts :: [
          state: term(),
          session_id: String.t() | nil,
          worker_id: pos_integer(),
          correlation_id: String.t()
        ]

  @doc "Runs `command` with `args` (a map with string keys)."
  @callback execute(command :: String.t(), args :: map(), opts()) ::
              {:ok, term()} | {:error, term()}

  @doc "Streams the items of `command`, each through `emit`."
  @callback execute_stream(
              command :: String.t(),
              args :: map(),
              emit :: (term() -> :ok),
              opts()
            ) :: :ok | {:error, term()}

  @doc "A worker starts: its state (`opts[:state]` of each call), from the pool's options."
  @callback init(config :: keyword()) :: {:ok, term()} | {:error, term()}

  @doc "A worker stops."
  @callback terminate(reason :: term(), state :: term()) :: term()

  @doc "Whether `execute_stream/4` is there (the design's name; informative)."
  @callback supports_streaming?() :: boolean()

  @doc "Always false here (the design's name; kept for adapters written for it)."
  @callback uses_grpc?() :: boolean()

  @optional_callbacks execute_stream: 4,
                      init: 1,
                      terminate: 2,
                      supports_streaming?: 0,
                      uses_grpc?: 0

  @doc """
  Whether `module` can serve a pool: it is loaded and exports `execute/3`.

      iex> Snakepit.Adapter.adapter?(Snakepit.Test.MockAdapter)
      true
      iex> Snakepit.Adapter.adapter?(String)
      false
  """
  @spec adapter?(module()) :: boolean()
  def adapter?(module) when is_atom(module) do
    Code.ensure_loaded?(module) and function_exported?(module, :execute, 3)
  end
end
