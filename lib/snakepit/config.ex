defmodule Snakepit.Config do
  # The moduledoc is set further down, once the table of options it shows
  # has been defined.

  alias Snakepit.Error

  @max_frame_limit 0xFFFF_FFFF

  # The shapes an option's value can take: the typespec of the validated
  # value, and the words that say what is expected (in error messages and in
  # the table of the moduledoc). Each shape has an accept/2 clause below.
  @shapes %{
    pool_name: {quote(do: atom()), "an atom"},
    python_class: {quote(do: String.t()), ~s(a dotted Python path like "my_pkg.module.ClassName")},
    pos_integer: {quote(do: pos_integer()), "a positive integer"},
    pos_ms: {quote(do: pos_integer()), "a positive integer (milliseconds)"},
    non_neg_ms: {quote(do: non_neg_integer()), "a non-negative integer (milliseconds)"},
    pos_or_infinity: {quote(do: pos_integer() | :infinity), "a positive integer or :infinity"},
    string: {quote(do: String.t()), "a non-empty string"},
    dir_list: {quote(do: [String.t()]), "a list of directory strings"},
    env:
      {quote(do: [{String.t(), String.t()}]), ~s(a list of {"NAME", "value"} string pairs or a map)},
    dir_or_nil: {quote(do: String.t() | nil), "a directory string or nil"},
    frame_size: {quote(do: pos_integer()), "an integer from 1 to #{@max_frame_limit}"},
    depth: {quote(do: 1..64), "an integer from 1 to 64"}
  }

  # THE table of pool options: everything else (the struct, its type,
  # validation, known_options/0, native_options/1 and the table in the
  # moduledoc) is derived from it. Fields:
  #   name    - the option
  #   shape   - a key of @shapes: its type and how it is checked
  #   default - a value; :required; or {:computed, {m, f, a}}, a default
  #             that depends on the machine, computed by validate/1
  #   doc     - one line for the moduledoc's table
  #   note    - (optional) words shown after the default in that table
  #   native  - (optional) true if native_options/1 passes it to the native
  #             pool; :infinity is passed as 0, "no limit"
  @options [
    %{
      name: :name,
      shape: :pool_name,
      default: :default,
      doc: "naming the pool in `Snakepit.execute/3`"
    },
    %{
      name: :adapter,
      shape: :python_class,
      default: :required,
      doc: "the Python class (a `snakepit_bridge.BaseAdapter`) workers run"
    },
    %{
      name: :size,
      shape: :pos_integer,
      default: {:computed, {System, :schedulers_online, []}},
      doc: "number of worker processes"
    },
    %{
      name: :python,
      shape: :string,
      default: "python3",
      doc: "interpreter: a path, or a name on the `PATH`"
    },
    %{
      name: :python_path,
      shape: :dir_list,
      default: [],
      doc: "directories prepended to `PYTHONPATH`"
    },
    %{name: :env, shape: :env, default: [], doc: "extra environment of the workers"},
    %{
      name: :cwd,
      shape: :dir_or_nil,
      default: nil,
      note: "the BEAM's cwd",
      doc: "working directory of the workers"
    },
    %{
      name: :max_frame_bytes,
      shape: :frame_size,
      default: 64 * 1024 * 1024,
      note: "64 MiB",
      native: true,
      doc: "largest message in either direction"
    },
    %{
      name: :startup_timeout,
      shape: :pos_ms,
      default: 30_000,
      doc: "ms to wait for the first worker's handshake"
    },
    %{
      name: :pipeline_depth,
      shape: :depth,
      default: 1,
      native: true,
      doc: "most calls written to one worker at a time"
    },
    %{
      name: :timeout,
      shape: :pos_or_infinity,
      default: 30_000,
      doc: "ms a call may take, queueing included, when the call gives no `:timeout`"
    },
    %{
      name: :queue_timeout,
      shape: :pos_or_infinity,
      default: :infinity,
      doc: "ms a call may wait for a worker (per call too)"
    },
    %{
      name: :max_queue,
      shape: :pos_integer,
      default: 10_000,
      native: true,
      doc: "most calls waiting; past it calls fail at once"
    },
    %{
      name: :cancel_grace,
      shape: :non_neg_ms,
      default: 2_000,
      doc: "ms a worker gets to stop a cancelled call"
    },
    %{
      name: :heartbeat_interval,
      shape: :pos_or_infinity,
      default: 5_000,
      doc: "ms between heartbeats, or `:infinity` for none"
    },
    %{
      name: :heartbeat_misses,
      shape: :pos_integer,
      default: 3,
      doc: "unanswered heartbeats in a row before a kill"
    },
    %{
      name: :max_requests,
      shape: :pos_or_infinity,
      default: :infinity,
      native: true,
      doc: "calls a worker serves before it is recycled"
    },
    %{
      name: :max_age,
      shape: :pos_or_infinity,
      default: :infinity,
      native: true,
      doc: "ms a worker lives before it is recycled"
    },
    %{
      name: :max_memory_mb,
      shape: :pos_or_infinity,
      default: :infinity,
      native: true,
      doc: "resident memory (MiB) past which it is recycled"
    },
    %{
      name: :startup_batch_size,
      shape: :pos_integer,
      default: 8,
      doc: "workers starting at the same time"
    },
    %{
      name: :max_start_failures,
      shape: :pos_integer,
      default: 5,
      doc: "failed starts in a row before the pool gives up"
    },
    %{
      name: :shutdown_timeout,
      shape: :non_neg_ms,
      default: 5_000,
      doc: "ms stopping waits for running calls"
    }
  ]

  @options Enum.map(@options, &Map.merge(%{note: nil, native: false}, &1))

  for %{name: name, shape: shape} <- @options, not Map.has_key?(@shapes, shape) do
    raise CompileError,
      description: "pool option #{inspect(name)} has an unknown shape #{inspect(shape)}"
  end

  @known Enum.map(@options, & &1.name)
  @required for %{name: name, default: :required} <- @options, do: name
  @computed for %{name: name, default: {:computed, mfa}} <- @options, do: {name, mfa}
  @native for %{name: name, native: true} <- @options, do: name
  @shape_of Map.new(@options, &{&1.name, &1.shape})
  @expected Map.new(@shapes, fn {shape, {_type, expected}} -> {shape, expected} end)

  # The moduledoc's table, padded so that it also reads well as plain text.
  show = fn
    n when is_integer(n) and n >= 1_000 ->
      String.replace(Integer.to_string(n), ~r/\B(?=(\d{3})+$)/, "_")

    value ->
      inspect(value)
  end

  rows =
    for %{name: name, shape: shape, default: default, note: note, doc: doc} <- @options do
      default_text =
        case default do
          :required -> "required"
          {:computed, {m, f, a}} -> "`#{Exception.format_mfa(m, f, a)}`, when validated"
          value when is_nil(note) -> "`#{show.(value)}`"
          value -> "`#{show.(value)}` (#{note})"
        end

      ["`#{inspect(name)}`", default_text, @expected[shape], doc]
    end

  header = ["option", "default", "accepts", "meaning"]
  widths = for column <- Enum.zip([header | rows]), do: Tuple.to_list(column)

  widths = Enum.map(widths, fn cells -> cells |> Enum.map(&String.length/1) |> Enum.max() end)

  format_row = fn cells ->
    padded = Enum.zip_with(cells, widths, &String.pad_trailing/2)
    "| " <> Enum.join(padded, " | ") <> " |"
  end

  rule = "|" <> Enum.map_join(widths, "|", &String.duplicate("-", &1 + 2)) <> "|"
  @options_table Enum.join([format_row.(header), rule | Enum.map(rows, format_row)], "\n")

  @moduledoc """
  Pool options: their meaning, defaults, and validation.

  A pool is configured with a keyword list, either as a child spec
  (`{Snakepit.Pool, name: :ml, adapter: "my_pkg.model.Adapter"}`) or in
  `config :snakepit, pools: [default: [adapter: "..."]]`. Every option is
  declared once, in a table in this module's source, from which this
  table, the checks of `validate/1`, `known_options/0` and
  `native_options/1` are all derived, so they cannot disagree.

  #{@options_table}

  A default shown as a call is computed by `validate/1` on the machine that
  runs the pool: `:size` defaults to the number of schedulers online there.
  `:env` may also be given as a map, and its names and values as atoms; it
  is stored as a list of string pairs.

  ### Timeouts and cancellation

  A call's `:timeout` (see `Snakepit.execute/3`; the pool's `:timeout` when
  the call gives none) counts from the call, queueing included;
  `:queue_timeout` bounds the part spent waiting for a worker. Past either,
  the caller gets a `:timeout` error and the call is cancelled:

  - a call still in the queue leaves it; one already written to a worker
    but not yet started there is skipped by the worker;
  - nothing interrupts Python code that is running. The worker is told on
    its control pipe, and from then on `snakepit_bridge.cancelled()` returns
    `True` inside the tool, which can poll it and return early;
  - a worker still busy with the call `:cancel_grace` ms later is killed
    and replaced.

  A caller that dies gives up its call the same way. The late answer of a
  cancelled call is never delivered.

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

  @type t :: %__MODULE__{
          unquote_splicing(
            for %{name: name, shape: shape} <- @options, do: {name, elem(@shapes[shape], 0)}
          )
        }

  @typedoc "The options `native_options/1` passes to the native pool; 0 means no limit."
  @type native_options :: %{
          unquote_splicing(for name <- @native, do: {name, quote(do: non_neg_integer())})
        }

  @enforce_keys @required ++ Keyword.keys(@computed)
  defstruct for %{name: name, default: default} <- @options,
                do: {name, if(name in @enforce_keys, do: nil, else: default)}

  @doc """
  The option names a pool accepts, in the order of the table above.

      iex> Enum.take(Snakepit.Config.known_options(), 3)
      [:name, :adapter, :size]
  """
  @spec known_options() :: [atom()]
  def known_options, do: @known

  @doc """
  Validates pool options and fills in defaults, computing those that
  depend on the machine (`:size`).

  Returns `{:error, %Snakepit.Error{category: :validation}}` naming the first
  bad option in its message and in `details.option`.

      iex> {:ok, config} = Snakepit.Config.validate(adapter: "m.A")
      iex> config.size == System.schedulers_online()
      true
      iex> {:error, error} = Snakepit.Config.validate(adapter: "m.A", timeout: 0)
      iex> {error.message, error.details}
      {"invalid pool option :timeout: expected a positive integer or :infinity, got: 0", %{option: :timeout}}
  """
  @spec validate(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def validate(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      with :ok <- check_unknown(opts),
           {:ok, required} <- fetch_required(opts) do
        computed = for {name, {m, f, a}} <- @computed, do: {name, apply(m, f, a)}
        defaults = struct!(__MODULE__, required ++ computed)

        Enum.reduce_while(opts, {:ok, defaults}, fn {key, value}, {:ok, acc} ->
          case check_option(key, value) do
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

  @doc """
  The options of a validated pool that the native pool takes: #{Enum.map_join(@native, ", ", &"`#{inspect(&1)}`")},
  as integers, with `:infinity` passed as `0` ("no limit").

      iex> {:ok, config} = Snakepit.Config.validate(adapter: "m.A", max_requests: 500)
      iex> Snakepit.Config.native_options(config)
      %{max_frame_bytes: 67108864, pipeline_depth: 1, max_queue: 10000,
        max_requests: 500, max_age: 0, max_memory_mb: 0}
  """
  @spec native_options(t()) :: native_options()
  def native_options(%__MODULE__{} = config) do
    Map.new(@native, fn name -> {name, native_value(Map.fetch!(config, name))} end)
  end

  defp native_value(:infinity), do: 0
  defp native_value(n) when is_integer(n) and n >= 0, do: n

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

  defp fetch_required(opts) do
    Enum.reduce_while(@required, {:ok, []}, fn key, {:ok, acc} ->
      case Keyword.fetch(opts, key) do
        {:ok, value} ->
          {:cont, {:ok, [{key, value} | acc]}}

        :error ->
          {:halt,
           {:error,
            Error.validation("missing required pool option #{inspect(key)}", %{option: key})}}
      end
    end)
  end

  defp invalid(key, expected, value) do
    Error.validation(
      "invalid pool option #{inspect(key)}: expected #{expected}, got: #{inspect(value)}",
      %{option: key}
    )
  end

  # {:ok, normalized value} or {:error, what was expected}.
  defp check_option(key, value) do
    shape = Map.fetch!(@shape_of, key)

    case accept(shape, value) do
      {:ok, value} -> {:ok, value}
      :error -> {:error, Map.fetch!(@expected, shape)}
    end
  end

  defp accept(:pool_name, v) when is_atom(v) and v not in [nil, true, false], do: {:ok, v}

  defp accept(:python_class, v) when is_binary(v) do
    if String.match?(v, ~r/^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$/), do: {:ok, v}, else: :error
  end

  defp accept(shape, v) when shape in [:pos_integer, :pos_ms] and is_integer(v) and v > 0,
    do: {:ok, v}

  defp accept(:non_neg_ms, v) when is_integer(v) and v >= 0, do: {:ok, v}
  defp accept(:pos_or_infinity, :infinity), do: {:ok, :infinity}
  defp accept(:pos_or_infinity, v) when is_integer(v) and v > 0, do: {:ok, v}
  defp accept(:string, v) when is_binary(v) and v != "", do: {:ok, v}

  defp accept(:dir_list, v) when is_list(v) do
    if Enum.all?(v, &is_binary/1), do: {:ok, v}, else: :error
  end

  defp accept(:env, v) when is_map(v), do: accept(:env, Map.to_list(v))

  defp accept(:env, v) when is_list(v) do
    if Enum.all?(v, &env_pair?/1),
      do: {:ok, Enum.map(v, fn {k, val} -> {to_string(k), to_string(val)} end)},
      else: :error
  end

  defp accept(:dir_or_nil, v) when is_nil(v) or is_binary(v), do: {:ok, v}

  defp accept(:frame_size, v) when is_integer(v) and v > 0 and v <= @max_frame_limit,
    do: {:ok, v}

  defp accept(:depth, v) when is_integer(v) and v in 1..64, do: {:ok, v}
  defp accept(_shape, _value), do: :error

  defp env_pair?({k, v}), do: (is_binary(k) or is_atom(k)) and (is_binary(v) or is_atom(v))
  defp env_pair?(_), do: false
end
