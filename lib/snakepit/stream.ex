defmodule Snakepit.Stream do
  @moduledoc """
  The consumer side of a streaming call, behind `Snakepit.execute_stream/4`
  and `Snakepit.stream/3`.

  A streaming call is submitted like any call, with a credit window `W`
  (`:stream_window`). The worker's chunks arrive in the caller's mailbox as
  `{tag, :chunk, frame, offset}`, decoded here, in the caller, like answers
  are; the stream ends with exactly one `{tag, :done, ...}`,
  `{tag, :python_error, ...}` or `{tag, :error, reason}`.

  **Backpressure.** The worker may send at most `W` chunks that the
  consumer has not taken. Each time the consumer has taken `max(1, div(W,
  2))` chunks, `Snakepit.Native.stream_ack/3` gives the worker that many
  credits back (an `ack` on its control pipe). So the mailbox never holds
  more than `W` chunks, however slow the consumer, and a Python generator
  that is ahead blocks in `yield`.

  **Ending early.** `cancel/1` gives the call up (`Snakepit.Native.cancel/2`,
  which closes the native side's sink, so no chunk is sent after it) and
  drops the chunks already in the mailbox. The worker is told on its
  control pipe and closes the generator. A consumer that dies gives the
  call up the same way, through the pool's monitor.

  **Timeouts.** `:timeout` bounds the whole stream (default `:infinity`),
  `:chunk_timeout` each wait for the next chunk (default: the pool's
  `:timeout`). Either gives a `:timeout` error and cancels the call.
  """

  alias Snakepit.{Error, Native}

  # After a cancel that reports the final answer as sent, how long to wait
  # for it, defensively (it is in the mailbox or arriving).
  @reply_in_flight_wait 5_000

  @enforce_keys [
    :handle,
    :tag,
    :request_id,
    :tool,
    :ack_every,
    :deadline,
    :chunk_timeout,
    :correlation_id,
    :telemetry
  ]
  defstruct @enforce_keys ++ [taken: 0, chunks: 0]

  @typedoc "A streaming call in progress."
  @type t :: %__MODULE__{
          handle: reference(),
          tag: reference(),
          request_id: pos_integer(),
          tool: String.t(),
          ack_every: pos_integer(),
          deadline: integer() | :infinity,
          chunk_timeout: timeout(),
          correlation_id: String.t(),
          telemetry: {map(), integer()} | nil,
          taken: non_neg_integer(),
          chunks: non_neg_integer()
        }

  @doc """
  Submits a streaming call. Options as `Snakepit.execute_stream/4`.
  """
  @spec start(String.t() | atom(), map() | keyword(), keyword()) ::
          {:ok, t()} | {:error, Error.t()}
  def start(command, args, opts) do
    pool = Keyword.get(opts, :pool, :default)

    with {:ok, correlation_id} <- Snakepit.Correlation.from_opts(opts),
         {:ok, entry} <- Snakepit.fetch_pool(pool),
         {:ok, tool} <- Snakepit.check_command(command),
         {:ok, args} <- Snakepit.check_args(args),
         timeout = Keyword.get(opts, :timeout, :infinity),
         :ok <- Snakepit.check_timeout(:timeout, timeout),
         chunk_timeout = Keyword.get(opts, :chunk_timeout, entry.timeout),
         :ok <- Snakepit.check_timeout(:chunk_timeout, chunk_timeout),
         {:ok, window} <- check_window(Keyword.get(opts, :stream_window, entry.stream_window)),
         {:ok, session} <- Snakepit.session_route(opts, entry) do
      tag = make_ref()
      call = %{pool: pool, tool: tool, session: session, correlation_id: correlation_id}
      telemetry = span_start(call)

      submitted =
        case Native.submit(entry.handle, tag, tool, args, session, window, correlation_id) do
          :dirty ->
            Native.submit_dirty(entry.handle, tag, tool, args, session, window, correlation_id)

          other ->
            other
        end

      case submitted do
        {:error, reason} ->
          error = Error.from_native(reason)
          if error.details[:queued], do: Snakepit.queue_full(call, error)
          span_stop(telemetry, 0, {:error, error})
          {:error, Snakepit.Correlation.tag(error, correlation_id)}

        accepted ->
          if tuple_size(accepted) == 3, do: Snakepit.session_created(call)

          {:ok,
           %__MODULE__{
             handle: entry.handle,
             tag: tag,
             request_id: elem(accepted, 1),
             tool: tool,
             ack_every: max(1, div(window, 2)),
             deadline: deadline(timeout),
             chunk_timeout: chunk_timeout,
             correlation_id: correlation_id,
             telemetry: telemetry
           }}
      end
    else
      {:error, error} -> {:error, error}
    end
  end

  defp span_start(call) do
    if Snakepit.Telemetry.enabled?() do
      metadata = %{
        pool: call.pool,
        command: call.tool,
        session_id: with({id, _} <- call.session, do: id),
        correlation_id: call.correlation_id
      }

      Snakepit.Telemetry.emit(
        [:snakepit, :stream, :start],
        Snakepit.Telemetry.start_measurements(),
        metadata
      )

      {metadata, System.monotonic_time()}
    end
  end

  defp span_stop(nil, _chunks, _result), do: :ok

  defp span_stop({metadata, started}, chunks, result) do
    {outcome, error} =
      case result do
        :done -> {:ok, nil}
        :halted -> {:halted, nil}
        {:error, error} -> {error.category, Snakepit.Redact.redact(error)}
      end

    Snakepit.Telemetry.emit(
      [:snakepit, :stream, :stop],
      %{duration: System.monotonic_time() - started, chunks: chunks},
      Map.merge(metadata, %{outcome: outcome, error: error})
    )
  end

  defp span_exception(nil, _chunks, _kind, _reason, _stacktrace), do: :ok

  defp span_exception({metadata, started}, chunks, kind, reason, stacktrace) do
    Snakepit.Telemetry.emit(
      [:snakepit, :stream, :exception],
      %{duration: System.monotonic_time() - started, chunks: chunks},
      Map.merge(metadata, %{kind: kind, reason: reason, stacktrace: stacktrace})
    )
  end

  # The stream ended (or failed): its telemetry span ends, its error gets
  # the correlation id.
  defp ended(s, :done) do
    span_stop(s.telemetry, s.chunks, :done)
    :done
  end

  defp ended(s, {:error, error}) do
    span_stop(s.telemetry, s.chunks, {:error, error})
    {:error, Snakepit.Correlation.tag(error, s.correlation_id)}
  end

  @doc """
  Waits for the next chunk: `{:chunk, value, stream}`, `:done`, or
  `{:error, error}` (the call is over either way, cancelled if need be).
  """
  @spec next(t()) :: {:chunk, term(), t()} | :done | {:error, Error.t()}
  def next(%__MODULE__{deadline: deadline} = s) when deadline != :infinity do
    # A consumer that always finds a chunk waiting never reaches `after`.
    if now() >= deadline, do: ended(s, timed_out(s)), else: receive_next(s)
  end

  def next(s), do: receive_next(s)

  defp receive_next(%__MODULE__{tag: tag} = s) do
    receive do
      {^tag, :chunk, frame, offset} ->
        case Native.decode_frame(frame, offset) do
          {:ok, value} ->
            {:chunk, value, taken(s)}

          {:refused, reason} ->
            drop(s)
            ended(s, {:error, Error.from_native(reason)})

          {:error, why} ->
            drop(s)

            ended(
              s,
              {:error,
               Error.transport("a chunk of #{Error.excerpt(s.tool)} could not be decoded: #{why}")}
            )
        end

      {^tag, status, frame, offset, _meta} ->
        ended(s, final(status, frame, offset))

      {^tag, :error, reason} ->
        ended(s, {:error, Error.from_native(reason)})
    after
      wait(s) -> ended(s, timed_out(s))
    end
  end

  @doc """
  Gives the call up and drops its chunks from the mailbox. Call it once,
  on a stream that has not ended.
  """
  @spec cancel(t()) :: :ok
  def cancel(%__MODULE__{} = s) do
    drop(s)
    span_stop(s.telemetry, s.chunks, :halted)
  end

  # Gives the call up and empties the mailbox of its messages. A timeout
  # counts as one; the consumer stopping early, as a cancel.
  defp drop(%__MODULE__{tag: tag} = s, why \\ :halted) do
    gave_up =
      if why == :timeout,
        do: Native.cancel(s.handle, s.request_id),
        else: Native.stream_cancel(s.handle, s.request_id)

    case gave_up do
      :replied -> await_final(tag)
      _gave_up -> :ok
    end

    flush(tag)
  end

  @doc false
  # Snakepit.execute_stream/4.
  @spec run(String.t() | atom(), map() | keyword(), (term() -> any()), keyword()) ::
          :ok | {:error, Error.t()}
  def run(command, args, callback, opts) do
    with {:ok, s} <- start(command, args, opts), do: run_loop(s, callback)
  end

  defp run_loop(s, callback) do
    case next(s) do
      {:chunk, value, s} ->
        try do
          callback.(value)
        catch
          kind, reason ->
            drop(s)
            span_exception(s.telemetry, s.chunks, kind, reason, __STACKTRACE__)
            :erlang.raise(kind, reason, __STACKTRACE__)
        end

        run_loop(s, callback)

      :done ->
        :ok

      {:error, _} = error ->
        error
    end
  end

  @doc false
  # Snakepit.stream/3: a Stream.resource whose accumulator is the stream,
  # or what to raise once it halts.
  @spec lazy(String.t() | atom(), map() | keyword(), keyword()) :: Enumerable.t()
  def lazy(command, args, opts) do
    Stream.resource(
      fn ->
        case start(command, args, opts) do
          {:ok, s} -> s
          {:error, error} -> {:raise, error}
        end
      end,
      fn
        %__MODULE__{} = s ->
          case next(s) do
            {:chunk, value, s} -> {[value], s}
            :done -> {:halt, :done}
            {:error, error} -> {:halt, {:raise, error}}
          end

        other ->
          {:halt, other}
      end,
      fn
        %__MODULE__{} = s -> cancel(s)
        :done -> :ok
        {:raise, error} -> raise error
      end
    )
  end

  defp taken(%__MODULE__{taken: taken, ack_every: every} = s) when taken + 1 >= every do
    :ok = Native.stream_ack(s.handle, s.request_id, taken + 1)
    %{s | taken: 0, chunks: s.chunks + 1}
  end

  defp taken(s), do: %{s | taken: s.taken + 1, chunks: s.chunks + 1}

  defp final(:done, _frame, _offset), do: :done

  defp final(:python_error, frame, offset) do
    case Native.decode_frame(frame, offset) do
      {:ok, body} -> {:error, Error.from_python(body)}
      {:refused, reason} -> {:error, Error.from_native(reason)}
      {:error, why} -> {:error, Error.transport("the worker's error could not be decoded: #{why}")}
    end
  end

  defp final(status, _frame, _offset),
    do: {:error, Error.transport("a stream ended with an unexpected #{inspect(status)} answer")}

  defp timed_out(s) do
    drop(s, :timeout)

    if s.deadline != :infinity and now() >= s.deadline do
      {:error,
       Error.timeout("the stream of #{Error.excerpt(s.tool)} did not end within its :timeout", %{
         tool: s.tool
       })}
    else
      {:error,
       Error.timeout(
         "no chunk of #{Error.excerpt(s.tool)} came within #{s.chunk_timeout} ms (:chunk_timeout)",
         %{tool: s.tool, timeout: s.chunk_timeout, chunk: true}
       )}
    end
  end

  # The final answer is in the mailbox or arriving; chunks may precede it.
  defp await_final(tag) do
    receive do
      {^tag, :chunk, _, _} -> await_final(tag)
      {^tag, _, _, _, _} -> :ok
      {^tag, :error, _} -> :ok
    after
      @reply_in_flight_wait -> :ok
    end
  end

  defp flush(tag) do
    receive do
      {^tag, _, _, _, _} -> flush(tag)
      {^tag, _, _, _} -> flush(tag)
      {^tag, _, _} -> flush(tag)
    after
      0 -> :ok
    end
  end

  defp wait(%{deadline: :infinity, chunk_timeout: chunk}), do: chunk
  defp wait(%{deadline: deadline, chunk_timeout: :infinity}), do: max(deadline - now(), 0)
  defp wait(%{deadline: deadline, chunk_timeout: chunk}), do: min(max(deadline - now(), 0), chunk)

  defp deadline(:infinity), do: :infinity
  defp deadline(ms), do: now() + ms

  defp now, do: System.monotonic_time(:millisecond)

  defp check_window(w) when is_integer(w) and w in 1..65_536, do: {:ok, w}

  defp check_window(w),
    do:
      {:error,
       Error.validation(
         "the :stream_window must be an integer from 1 to 65_536, got: #{Error.excerpt(w)}",
         %{option: :stream_window}
       )}
end
