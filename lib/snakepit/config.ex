defmodule Snakepit.Config do
  @moduledoc """
  Pool options: their meaning, defaults, and validation.

  A pool is configured with a keyword list, either as a child spec
  (`{Snakepit.Pool, name: :ml, adapter: "my_pkg.model.Adapter"}`) or in
  `config :snakepit, pools: [default: [adapter: "..."]]`.

  | option             | default                    | meaning                                          |
  |--------------------|----------------------------|--------------------------------------------------|
  | `:name`            | `:default`                 | atom naming the pool in `Snakepit.execute/3`     |
  | `:adapter`         | required                   | `"pkg.module.ClassName"` of a `BaseAdapter`      |
  | `:size`            | `System.schedulers_online()` | number of worker processes                     |
  | `:python`          | `"python3"`                | interpreter: a path, or a name on the `PATH`     |
  | `:python_path`     | `[]`                       | directories prepended to `PYTHONPATH`            |
  | `:env`             | `[]`                       | extra environment, `[{"NAME", "value"}]` or a map |
  | `:cwd`             | `nil` (the BEAM's cwd)     | working directory of the workers                 |
  | `:max_frame_bytes` | `67_108_864` (64 MiB)      | largest message in either direction              |
  | `:startup_timeout` | `30_000`                   | ms to wait for the first worker's handshake      |
  | `:pipeline_depth`  | `1`                        | most calls written to one worker at a time       |
  | `:queue_timeout`   | `:infinity`                | ms a call may wait for a worker (per call too)   |
  | `:max_queue`       | `10_000`                   | most calls waiting; past it calls fail at once   |
  | `:cancel_grace`    | `2_000`                    | ms a worker gets to stop a timed-out call        |
  | `:heartbeat_interval` | `5_000`                 | ms between heartbeats, or `:infinity` for none   |
  | `:heartbeat_misses` | `3`                       | unanswered heartbeats in a row before a kill     |
  | `:max_requests`    | `:infinity`                | calls a worker serves before it is recycled      |
  | `:max_age`         | `:infinity`                | ms a worker lives before it is recycled          |
  | `:max_memory_mb`   | `:infinity`                | resident memory (MiB) past which it is recycled  |
  | `:startup_batch_size` | `8`                     | workers starting at the same time                |
  | `:max_start_failures` | `5`                     | failed starts in a row before the pool gives up  |
  | `:shutdown_timeout` | `5_000`                   | ms stopping waits for running calls              |

  ### Timeouts and cancellation

  A call's `:timeout` (see `Snakepit.execute/3`) counts from the call,
  queueing included; `:queue_timeout` bounds the part spent waiting for a
  worker. Past either, the caller gets a `:timeout` error. A call that timed
  out while running is cancelled: the bridge raises
  `snakepit_bridge.CallCancelled` in the tool (this interrupts Python code,
  not a blocking C call), and a worker that is still busy with it
  `:cancel_grace` ms later is killed and replaced. A caller that dies
  gives up its call the same way. Its late answer is never delivered.

  ### Health and recycling

  Every `:heartbeat_interval` ms each ready worker gets a heartbeat on its
  control pipe, answered by a thread of the bridge even while a call runs.
  A worker that misses `:heartbeat_misses` in a row (frozen, or stuck in C
  code holding the GIL) is killed and replaced. Workers are also recycled,
  drained of their calls first, after `:max_requests` calls, `:max_age` ms,
  or once their resident memory passes `:max_memory_mb` (checked every
  second; age and memory recycle one worker at a time, so capacity never
  drops by more than one).

  ### Starting and stopping

  Workers start `:startup_batch_size` at a time, so a large pool does not
  fork-storm a small machine. A worker that dies is restarted at once; one
  that then fails again before its handshake is restarted with backoff (50 ms
  doubling to 10 s); after
  `:max_start_failures` failures in a row the pool stops with an error.
  Stopping a pool answers queued calls with a `:pool` error, lets running
  ones finish for up to `:shutdown_timeout` ms, then sends SIGTERM to each
  worker's process group, and SIGKILL a second later. Each worker's shepherd
  then kills anything the worker started, however deeply nested.

  ### Pipelining

  With `pipeline_depth: 1` a call goes only to an idle worker, and a worker
  that finishes waits one round trip (tens of µs) for its next call. With a
  depth of N, up to N calls are written to a worker at once: it finds the
  next one already in its pipe. That can double the throughput of very short
  calls (see `bench/roundtrip.exs`). The price is head-of-line blocking: a
  call written behind a slow one waits for it even if another worker frees up
  meanwhile. Leave it at 1 for calls that take milliseconds or more, or whose
  durations vary; raise it (2 to 4) for many tiny calls. Calls still queue in
  FIFO order, and those written behind a call whose worker dies are queued
  again, not failed (they never started).

  Snakepit's own `priv/python` is always on the workers' `PYTHONPATH`, so
  `snakepit_bridge` needs no install.

      iex> {:ok, config} = Snakepit.Config.validate(adapter: "m.A", size: 2)
      iex> {config.name, config.size, config.python, config.max_frame_bytes}
      {:default, 2, "python3", 67108864}

      iex> {:error, error} = Snakepit.Config.validate(adapter: "m.A", size: 0)
      iex> error.message
      "invalid pool option :size: expected a positive integer, got: 0"
  """

  alias Snakepit.Error

  @type t :: %__MODULE__{
          name: atom(),
          adapter: String.t(),
          size: pos_integer(),
          python: String.t(),
          python_path: [String.t()],
          env: [{String.t(), String.t()}],
          cwd: String.t() | nil,
          max_frame_bytes: pos_integer(),
          startup_timeout: pos_integer(),
          pipeline_depth: pos_integer(),
          queue_timeout: timeout(),
          max_queue: pos_integer(),
          cancel_grace: non_neg_integer(),
          heartbeat_interval: timeout(),
          heartbeat_misses: pos_integer(),
          max_requests: pos_integer() | :infinity,
          max_age: pos_integer() | :infinity,
          max_memory_mb: pos_integer() | :infinity,
          startup_batch_size: pos_integer(),
          max_start_failures: pos_integer(),
          shutdown_timeout: non_neg_integer()
        }

  @enforce_keys [:adapter]
  defstruct name: :default,
            adapter: nil,
            size: 1,
            python: "python3",
            python_path: [],
            env: [],
            cwd: nil,
            max_frame_bytes: 64 * 1024 * 1024,
            startup_timeout: 30_000,
            pipeline_depth: 1,
            queue_timeout: :infinity,
            max_queue: 10_000,
            cancel_grace: 2_000,
            heartbeat_interval: 5_000,
            heartbeat_misses: 3,
            max_requests: :infinity,
            max_age: :infinity,
            max_memory_mb: :infinity,
            startup_batch_size: 8,
            max_start_failures: 5,
            shutdown_timeout: 5_000

  @max_frame_limit 0xFFFF_FFFF
  @known [
    :name,
    :adapter,
    :size,
    :python,
    :python_path,
    :env,
    :cwd,
    :max_frame_bytes,
    :startup_timeout,
    :pipeline_depth,
    :queue_timeout,
    :max_queue,
    :cancel_grace,
    :heartbeat_interval,
    :heartbeat_misses,
    :max_requests,
    :max_age,
    :max_memory_mb,
    :startup_batch_size,
    :max_start_failures,
    :shutdown_timeout
  ]

  # Shapes shared by several options (see check/2).
  @positive_or_infinity [
    :queue_timeout,
    :heartbeat_interval,
    :max_requests,
    :max_age,
    :max_memory_mb
  ]
  @positive [:max_queue, :heartbeat_misses, :startup_batch_size, :max_start_failures]
  @non_negative [:cancel_grace, :shutdown_timeout]

  @doc """
  The options the native pool takes (`Snakepit.Native.pool_new/2`), with
  `:infinity` as 0 (no limit).
  """
  @spec native_options(t()) :: %{atom() => non_neg_integer()}
  def native_options(config) do
    for key <- [
          :max_frame_bytes,
          :pipeline_depth,
          :max_queue,
          :max_requests,
          :max_age,
          :max_memory_mb
        ],
        into: %{} do
      value = Map.fetch!(config, key)
      {key, if(value == :infinity, do: 0, else: value)}
    end
  end

  @doc "The option names a pool accepts."
  @spec known_options() :: [atom()]
  def known_options, do: @known

  @doc """
  Validates pool options and fills in defaults.

  Returns `{:error, %Snakepit.Error{category: :validation}}` naming the first
  bad option.
  """
  @spec validate(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def validate(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      with :ok <- check_unknown(opts),
           {:ok, adapter} <- fetch_required(opts, :adapter) do
        defaults = %__MODULE__{adapter: adapter, size: System.schedulers_online()}

        Enum.reduce_while(opts, {:ok, defaults}, fn {key, value}, {:ok, acc} ->
          case check(key, value) do
            {:ok, value} -> {:cont, {:ok, Map.put(acc, key, value)}}
            {:error, expected} -> {:halt, {:error, invalid(key, expected, value)}}
          end
        end)
      end
    else
      {:error, Error.validation("pool options must be a keyword list, got: #{inspect(opts)}")}
    end
  end

  def validate(other) do
    {:error, Error.validation("pool options must be a keyword list, got: #{inspect(other)}")}
  end

  defp check_unknown(opts) do
    case Enum.find(Keyword.keys(opts), &(&1 not in @known)) do
      nil ->
        :ok

      key ->
        {:error,
         Error.validation(
           "unknown pool option #{inspect(key)}; known options: " <>
             Enum.map_join(@known, ", ", &inspect/1),
           %{option: key}
         )}
    end
  end

  defp fetch_required(opts, key) do
    case Keyword.fetch(opts, key) do
      {:ok, value} ->
        {:ok, value}

      :error ->
        {:error, Error.validation("missing required pool option #{inspect(key)}", %{option: key})}
    end
  end

  defp invalid(key, expected, value) do
    Error.validation(
      "invalid pool option #{inspect(key)}: expected #{expected}, got: #{inspect(value)}",
      %{option: key}
    )
  end

  defp check(:name, v) when is_atom(v) and v not in [nil, true, false], do: {:ok, v}
  defp check(:name, _), do: {:error, "an atom"}

  defp check(:adapter, v) when is_binary(v) do
    if String.match?(v, ~r/^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$/),
      do: {:ok, v},
      else: {:error, ~s(a dotted Python path like "my_pkg.module.ClassName")}
  end

  defp check(:adapter, _), do: {:error, ~s(a dotted Python path like "my_pkg.module.ClassName")}

  defp check(:size, v) when is_integer(v) and v > 0, do: {:ok, v}
  defp check(:size, _), do: {:error, "a positive integer"}

  defp check(:python, v) when is_binary(v) and v != "", do: {:ok, v}
  defp check(:python, _), do: {:error, "a non-empty string"}

  defp check(:python_path, v) when is_list(v) do
    if Enum.all?(v, &is_binary/1), do: {:ok, v}, else: {:error, "a list of directory strings"}
  end

  defp check(:python_path, _), do: {:error, "a list of directory strings"}

  defp check(:env, v) when is_map(v), do: check(:env, Map.to_list(v))

  defp check(:env, v) when is_list(v) do
    if Enum.all?(v, &env_pair?/1),
      do: {:ok, Enum.map(v, fn {k, val} -> {to_string(k), to_string(val)} end)},
      else: {:error, ~s(a list of {"NAME", "value"} string pairs or a map)}
  end

  defp check(:env, _), do: {:error, ~s(a list of {"NAME", "value"} string pairs or a map)}

  defp check(:cwd, nil), do: {:ok, nil}
  defp check(:cwd, v) when is_binary(v), do: {:ok, v}
  defp check(:cwd, _), do: {:error, "a directory string or nil"}

  defp check(:max_frame_bytes, v) when is_integer(v) and v > 0 and v <= @max_frame_limit,
    do: {:ok, v}

  defp check(:max_frame_bytes, _), do: {:error, "an integer from 1 to #{@max_frame_limit}"}

  defp check(:pipeline_depth, v) when is_integer(v) and v in 1..64, do: {:ok, v}
  defp check(:pipeline_depth, _), do: {:error, "an integer from 1 to 64"}

  defp check(:startup_timeout, v) when is_integer(v) and v > 0, do: {:ok, v}
  defp check(:startup_timeout, _), do: {:error, "a positive integer (milliseconds)"}

  defp check(key, :infinity) when key in @positive_or_infinity, do: {:ok, :infinity}

  defp check(key, v) when key in @positive_or_infinity and is_integer(v) and v > 0, do: {:ok, v}

  defp check(key, _) when key in @positive_or_infinity,
    do: {:error, "a positive integer or :infinity"}

  defp check(key, v) when key in @positive and is_integer(v) and v > 0, do: {:ok, v}
  defp check(key, _) when key in @positive, do: {:error, "a positive integer"}

  defp check(key, v) when key in @non_negative and is_integer(v) and v >= 0, do: {:ok, v}

  defp check(key, _) when key in @non_negative,
    do: {:error, "a non-negative integer (milliseconds)"}

  defp env_pair?({k, v}), do: (is_binary(k) or is_atom(k)) and (is_binary(v) or is_atom(v))
  defp env_pair?(_), do: false
end
