defmodule Snakepit.Stream do
  @moduledoc """
  The consumer side of a streaming call, behind `Snakepit.execute_stream/4`
  and `Snakepit.stream/3`.

  A streaming call is submitted like any call, with a credit window `W`
  (`:stream_window`). The worker's chunks arrive in the caller's mailbox as
  `{tag, :chunk, frame, offset}`, decoded here, in the caller, like answers
  are; the stream ends with exactly one `{tag, :done, ...}`,
  `{tag, :python_error | :validation_error, ...}` or `{tag, :error, reason}`.

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
  `:queue_timeout` bounds the wait for a worker to start it, as for a plain
  call (`Snakepit.Call`). Streams are not retried: chunks already taken
  cannot be taken back.
  """

  alias Snakepit.{Call, Error}

  @enforce_keys [
    :call,
    :tag,
    :request_id,
    :ack_every,
    :deadline,
    :queue_deadline,
    :span
  ]
  defstruct @enforce_keys ++ [taken: 0, chunks: 0]

  @typedoc "A streaming call in progress."
  @type t :: %__MODULE__{
          call: Call.t(),
          tag: reference(),
          request_id: pos_integer(),
          ack_every: pos_integer(),
          deadline: integer() | :infinity,
          queue_deadline: integer() | :infinity,
          span: {atom(), map(), integer()} | nil,
          taken: non_neg_integer(),
          chunks: non_neg_integer()
        }

  @doc """
  Submits a streaming call. Options as `Snakepit.execute_stream/4` (see
  `Snakepit.CallOptions`).
  """
  @spec start(String.t() | atom(), map() | keyword(), keyword()) ::
          {:ok, t()} | {:error, Error.t()}
  def start(command, args, opts) do
    with {:ok, c} <- Call.prepare(command, args, opts, :stream) do
      tag = make_ref()
      span = Call.span_start(c, :stream, %{})

      case Call.submit(c, tag) do
        {:ok, request_id} ->
          {:ok,
           %__MODULE__{
             call: c,
             tag: tag,
             request_id: request_id,
             ack_every: max(1, div(c.window, 2)),
             deadline: deadline(c.timeout),
             queue_deadline: deadline(c.queue_timeout),
             span: span
           }}

        {:error, error} ->
          Call.span_stop(span, error, %{chunks: 0}, %{})
          {:error, Snakepit.Correlation.tag(error, c.correlation_id)}
      end
    end
  end

  # The stream ended (or failed): its telemetry span ends, its error gets
  # the correlation id.
  defp ended(s, :done) do
    Call.span_stop(s.span, :ok, %{chunks: s.chunks}, %{})
    :done
  end

  defp ended(s, {:error, error}) do
    Call.span_stop(s.span, error, %{chunks: s.chunks}, %{})
    {:error, Snakepit.Correlation.tag(error, s.call.correlation_id)}
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
        case Call.decode(:chunk, frame, offset) do
          {:ok, value} ->
            {:chunk, value, taken(s)}

          {:error, error} ->
            drop(s)
            ended(s, {:error, error})
        end

      {^tag, status, frame, offset, _meta} ->
        ended(s, final(status, frame, offset))

      {^tag, :error, reason} ->
        ended(s, {:error, Error.from_native(reason)})

      {^tag, :dequeued} ->
        ended(s, Call.queue_timeout_error(s.call, s.call.queue_timeout))
    after
      wait(s) -> expired(s)
    end
  end

  # A wait ran out: the queue timeout (no worker started the call yet), or
  # the stream's time or the chunk's.
  defp expired(%__MODULE__{queue_deadline: queue_deadline} = s) do
    if queue_deadline != :infinity and now() >= queue_deadline and not past_deadline?(s) do
      case Call.dequeue(s.call, s.request_id, s.call.queue_timeout) do
        :continue -> receive_next(%{s | queue_deadline: :infinity})
        {:error, _} = error -> ended(s, error)
      end
    else
      ended(s, timed_out(s))
    end
  end

  @doc """
  Gives the call up and drops its chunks from the mailbox. Call it once,
  on a stream that has not ended.
  """
  @spec cancel(t()) :: :ok
  def cancel(%__MODULE__{} = s) do
    drop(s)
    Call.span_stop(s.span, :halted, %{chunks: s.chunks}, %{})
  end

  # Gives the call up and empties the mailbox of its messages. A timeout
  # counts as one; the consumer stopping early, as a cancel.
  defp drop(%__MODULE__{tag: tag} = s, how \\ :halt) do
    _ = Call.cancel(s.call, tag, s.request_id, how)
    flush(tag)
  end

  @doc """
  Runs a streaming call, giving each chunk to `callback` in the calling
  process: what `Snakepit.execute_stream/4` does.
  """
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
            Call.span_exception(s.span, %{chunks: s.chunks}, kind, reason, __STACKTRACE__)
            :erlang.raise(kind, reason, __STACKTRACE__)
        end

        run_loop(s, callback)

      :done ->
        :ok

      {:error, _} = error ->
        error
    end
  end

  @doc """
  A streaming call as a lazy `Enumerable`: what `Snakepit.stream/3` returns.
  """
  # A Stream.resource whose accumulator is the stream, or what to raise once
  # it halts.
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

  # A chunk arrived: the call has started (no queue timeout any more), and
  # every `ack_every` chunks taken go back to the worker as credits.
  defp taken(%__MODULE__{taken: taken, ack_every: every} = s) when taken + 1 >= every do
    :ok = Call.backend(s.call.handle).stream_ack(s.call.handle, s.request_id, taken + 1)
    %{s | taken: 0, chunks: s.chunks + 1, queue_deadline: :infinity}
  end

  defp taken(s), do: %{s | taken: s.taken + 1, chunks: s.chunks + 1, queue_deadline: :infinity}

  defp final(:done, _frame, _offset), do: :done

  defp final(status, frame, offset) when status in [:python_error, :validation_error],
    do: Call.decode(status, frame, offset)

  defp final(status, _frame, _offset),
    do: {:error, Error.transport("a stream ended with an unexpected #{inspect(status)} answer")}

  defp timed_out(%__MODULE__{call: c} = s) do
    drop(s, :timeout)

    if past_deadline?(s) do
      {:error,
       Error.timeout("the stream of #{Error.excerpt(c.tool)} did not end within its :timeout", %{
         tool: c.tool
       })}
    else
      {:error,
       Error.timeout(
         "no chunk of #{Error.excerpt(c.tool)} came within #{c.chunk_timeout} ms (:chunk_timeout)",
         %{tool: c.tool, timeout: c.chunk_timeout, chunk: true}
       )}
    end
  end

  defp past_deadline?(%{deadline: :infinity}), do: false
  defp past_deadline?(%{deadline: deadline}), do: now() >= deadline

  defp flush(tag) do
    receive do
      {^tag, _, _, _, _} -> flush(tag)
      {^tag, _, _, _} -> flush(tag)
      {^tag, _, _} -> flush(tag)
      {^tag, _} -> flush(tag)
    after
      0 -> :ok
    end
  end

  # The next wait: until the first of the stream's deadline, the queue
  # deadline and the chunk timeout.
  # (:infinity, an atom, sorts after every integer, so min/2 keeps the bound.)
  defp wait(%{deadline: deadline, queue_deadline: queue_deadline, call: c}) do
    now = now()
    Enum.min([left(deadline, now), left(queue_deadline, now), c.chunk_timeout])
  end

  defp left(:infinity, _now), do: :infinity
  defp left(deadline, now), do: max(deadline - now, 0)

  defp deadline(:infinity), do: :infinity
  defp deadline(ms), do: now() + ms

  defp now, do: System.monotonic_time(:millisecond)
end
