defmodule Snakepit.CallOptions do
  # The moduledoc is set further down, once the table it shows is defined.

  alias Snakepit.Error

  @max_timeout Snakepit.Config.max_timeout()
  @max_session_id 256

  # THE table of call options. Everything else (which options a call kind
  # accepts, the error for an unknown one, and the table in the moduledoc)
  # is derived from it; resolve/2 checks each value. Fields:
  #   name    - the option
  #   kinds   - :call (execute/3 and friends), :stream (execute_stream/4,
  #             stream/3 and friends)
  #   default - words for the moduledoc's table
  #   doc     - one line for that table
  @options [
    %{
      name: :pool,
      kinds: [:call, :stream],
      default: "`:default`",
      doc: "the pool's name"
    },
    %{
      name: :timeout,
      kinds: [:call, :stream],
      default: "the pool's `:timeout` (calls); `:infinity` (streams)",
      doc:
        "ms to wait for the answer (a stream: for its end), queueing included, or `:infinity`; " <>
          "past it the call is cancelled and gets a `:timeout` error"
    },
    %{
      name: :queue_timeout,
      kinds: [:call, :stream],
      default: "the pool's `:queue_timeout`",
      doc:
        "ms the call may wait for a worker to start it; past it, a `:timeout` error " <>
          "whose details have `queue: true`"
    },
    %{
      name: :session_id,
      kinds: [:call, :stream],
      default: "`nil`",
      doc: "the session the call belongs to, a string of 1 to #{@max_session_id} bytes"
    },
    %{
      name: :affinity,
      kinds: [:call, :stream],
      default: "the pool's `:affinity`",
      doc: "how a session's call picks its worker: `:strict`, `:hint` or `:fail_fast`"
    },
    %{
      name: :correlation_id,
      kinds: [:call, :stream],
      default: "a new one",
      doc: "a string (1 to 128 bytes) that follows the call into logs, telemetry and errors"
    },
    %{
      name: :retry,
      kinds: [:call],
      default: "the pool's `:retry`",
      doc:
        "`false`, or options of `Snakepit.Retry.run/2`: retry after errors that say the call " <>
          "never started, within `:timeout`. Streams are not retried (`false` only)"
    },
    %{
      name: :chunk_timeout,
      kinds: [:stream],
      default: "the pool's `:timeout`",
      doc: "ms to wait for each next chunk of a stream, or `:infinity`"
    },
    %{
      name: :stream_window,
      kinds: [:stream],
      default: "the pool's `:stream_window`",
      doc: "chunks a stream's worker may send ahead of the consumer, 1 to 65_536"
    }
  ]

  @names Enum.map(@options, & &1.name)
  @kinds %{
    call: for(%{name: n, kinds: k} <- @options, :call in k, do: n),
    stream: for(%{name: n, kinds: k} <- @options, :stream in k, do: n)
  }
  # Accepted for a stream only when they ask for what streams do anyway.
  @stream_tolerates %{retry: [false, nil]}

  rows =
    for %{name: name, kinds: kinds, default: default, doc: doc} <- @options do
      kinds = Enum.map_join(kinds, ", ", &if(&1 == :call, do: "calls", else: "streams"))
      "| `#{inspect(name)}` | #{kinds} | #{default} | #{doc} |"
    end

  @moduledoc """
  The options of a call, declared once.

  `Snakepit.execute/3`, `execute!/3` and `execute_in_session/4` take the
  options marked "calls"; `execute_stream/4`, `execute_in_session_stream/5`
  and `stream/3` those marked "streams". Each option is checked before
  anything is sent: a bad value, an option no call has, or one that does
  not apply to that kind of call is a `:validation` error that names it
  (and, when unknown, the ones that exist). Defaults that name the pool
  come from its options (`Snakepit.Config`).

  Timeouts are `:infinity` or integers from 0 to
  `Snakepit.Config.max_timeout/0` (about 49.7 days, the most the VM can wait).

  | option | for | default | what it does |
  | --- | --- | --- | --- |
  #{Enum.join(rows, "\n")}

      iex> {:error, e} = Snakepit.execute("echo", %{}, timout: 5)
      iex> {e.category, e.details.option}
      {:validation, :timout}
  """

  @typedoc "A call's kind: a plain call or a stream."
  @type kind :: :call | :stream

  @typedoc "The options of a call, resolved against its pool."
  @type resolved :: %{
          pool: atom(),
          handle: reference(),
          correlation_id: String.t(),
          timeout: timeout(),
          queue_timeout: timeout(),
          session: {String.t(), Snakepit.affinity()} | nil,
          retry: keyword() | nil,
          chunk_timeout: timeout() | nil,
          window: pos_integer() | nil
        }

  @doc "The names of the options a kind of call accepts."
  @spec names(kind()) :: [atom()]
  def names(kind) when is_map_key(@kinds, kind), do: Map.fetch!(@kinds, kind)

  @doc """
  Checks `opts` for a call of `kind` and fills in the defaults of its pool.

      iex> {:ok, r} = Snakepit.CallOptions.resolve([timeout: 5_000], :call)
      iex> {r.pool, r.timeout, r.session}
      {:default, 5_000, nil}
      iex> {:error, e} = Snakepit.CallOptions.resolve([chunk_timeout: 5], :call)
      iex> e.message
      "the :chunk_timeout option applies to streaming calls only"
  """
  @spec resolve(term(), kind()) :: {:ok, resolved()} | {:error, Error.t()}
  def resolve(opts, kind) do
    with :ok <- check_keyword(opts),
         {:ok, correlation_id} <- Snakepit.Correlation.from_opts(opts) do
      case resolve(opts, kind, correlation_id) do
        {:ok, _} = ok -> ok
        {:error, error} -> {:error, Snakepit.Correlation.tag(error, correlation_id)}
      end
    end
  end

  defp check_keyword(opts) do
    if is_list(opts) and Keyword.keyword?(opts),
      do: :ok,
      else:
        {:error,
         Error.validation("call options must be a keyword list, got: #{Error.excerpt(opts)}", %{
           option: nil
         })}
  end

  defp resolve(opts, kind, correlation_id) do
    pool = Keyword.get(opts, :pool, :default)

    with :ok <- check_names(opts, kind),
         {:ok, entry} <- Snakepit.Pool.fetch(pool),
         {:ok, timeout} <-
           check_timeout(:timeout, Keyword.get(opts, :timeout, timeout(kind, entry))),
         {:ok, queue_timeout} <-
           check_timeout(:queue_timeout, Keyword.get(opts, :queue_timeout, entry.queue_timeout)),
         {:ok, session} <- session_route(opts, entry),
         {:ok, retry} <- retry(kind, opts, entry),
         {:ok, chunk_timeout} <- chunk_timeout(kind, opts, entry),
         {:ok, window} <- window(kind, opts, entry) do
      {:ok,
       %{
         pool: pool,
         handle: entry.handle,
         correlation_id: correlation_id,
         timeout: timeout,
         queue_timeout: queue_timeout,
         session: session,
         retry: retry,
         chunk_timeout: chunk_timeout,
         window: window
       }}
    end
  end

  defp timeout(:stream, _entry), do: :infinity
  defp timeout(:call, entry), do: entry.timeout

  defp retry(:stream, _opts, _entry), do: {:ok, nil}
  defp retry(:call, opts, entry), do: retry_opts(Keyword.get(opts, :retry, entry.retry))

  defp chunk_timeout(:call, _opts, _entry), do: {:ok, nil}

  defp chunk_timeout(:stream, opts, entry),
    do: check_timeout(:chunk_timeout, Keyword.get(opts, :chunk_timeout, entry.timeout))

  defp window(:call, _opts, _entry), do: {:ok, nil}

  defp window(:stream, opts, entry) do
    case Keyword.get(opts, :stream_window, entry.stream_window) do
      w when is_integer(w) and w in 1..65_536 ->
        {:ok, w}

      w ->
        {:error,
         Error.validation(
           "the :stream_window must be an integer from 1 to 65_536, got: #{Error.excerpt(w)}",
           %{option: :stream_window}
         )}
    end
  end

  defp check_names([], _kind), do: :ok

  defp check_names([{name, value} | rest], kind) do
    cond do
      name in Map.fetch!(@kinds, kind) ->
        check_names(rest, kind)

      kind == :stream and value in Map.get(@stream_tolerates, name, []) ->
        check_names(rest, kind)

      name in @names ->
        {:error, Error.validation(inapplicable(name, kind), %{option: name})}

      true ->
        known = Enum.map_join(names(kind), ", ", &inspect/1)

        {:error,
         Error.validation("unknown call option #{inspect(name)}; the known ones are: #{known}", %{
           option: name,
           known: names(kind)
         })}
    end
  end

  defp inapplicable(:retry, :stream),
    do:
      "streams are not retried (chunks already taken cannot be taken back): " <>
        "the :retry option of a stream can only be false"

  defp inapplicable(name, :call), do: "the #{inspect(name)} option applies to streaming calls only"
  defp inapplicable(name, :stream), do: "the #{inspect(name)} option applies to plain calls only"

  @doc """
  `{:ok, t}` if `t` is a timeout a call may wait (`:infinity`, or 0 to
  `Snakepit.Config.max_timeout/0` ms), else a `:validation` error naming
  `option`. Past that limit `receive ... after` raises, and the answer
  would be left in the caller's mailbox.
  """
  @spec check_timeout(atom(), term()) :: {:ok, timeout()} | {:error, Error.t()}
  def check_timeout(_option, :infinity), do: {:ok, :infinity}
  def check_timeout(_option, t) when is_integer(t) and t >= 0 and t <= @max_timeout, do: {:ok, t}

  def check_timeout(option, t),
    do:
      {:error,
       Error.validation(
         "the #{inspect(option)} must be :infinity or an integer from 0 to #{@max_timeout} (ms), " <>
           "got: #{Error.excerpt(t)}",
         %{option: option}
       )}

  @doc """
  The session a call's `opts` name, as the native submit takes it: `nil`
  (no session) or `{session_id, affinity}`, the affinity defaulting to the
  pool's.
  """
  @spec session_route(keyword(), Snakepit.Pool.entry()) ::
          {:ok, {String.t(), Snakepit.affinity()} | nil} | {:error, Error.t()}
  def session_route(opts, entry) do
    affinity = Keyword.get(opts, :affinity, entry.affinity)

    with :ok <- check_affinity(affinity) do
      case Keyword.get(opts, :session_id) do
        nil -> {:ok, nil}
        id -> with :ok <- check_session_id(id), do: {:ok, {id, affinity}}
      end
    end
  end

  # `nil` (no retry) or the options of Snakepit.Retry.run/2.
  defp retry_opts(false), do: {:ok, nil}
  defp retry_opts(nil), do: {:ok, nil}
  defp retry_opts(true), do: {:ok, []}

  defp retry_opts(opts) when is_list(opts) do
    if Keyword.keyword?(opts) and not Keyword.has_key?(opts, :timeout),
      do: {:ok, opts},
      else: retry_refused(opts)
  end

  defp retry_opts(other), do: retry_refused(other)

  defp retry_refused(value),
    do:
      {:error,
       Error.validation(
         "the :retry option must be false, true or a keyword list of Snakepit.Retry options " <>
           "(its total time is the call's :timeout), got: #{Error.excerpt(value)}",
         %{option: :retry}
       )}

  defp check_session_id(id) when is_binary(id) and byte_size(id) in 1..@max_session_id, do: :ok

  defp check_session_id(id),
    do:
      {:error,
       Error.validation(
         "the :session_id must be a string of 1 to #{@max_session_id} bytes, got: " <>
           Error.excerpt(id),
         %{option: :session_id}
       )}

  defp check_affinity(a) when a in [:strict, :hint, :fail_fast], do: :ok

  defp check_affinity(a),
    do:
      {:error,
       Error.validation(
         "the :affinity must be :strict, :hint or :fail_fast, got: #{Error.excerpt(a)}",
         %{option: :affinity}
       )}
end
