defmodule Snakepit.Call do
  @moduledoc """
  The call engine: every entry point of `Snakepit` that runs a tool goes
  through here, plain calls (`execute/3`, `execute!/3`,
  `execute_in_session/4`) and streams (`execute_stream/4`, `stream/3` and
  their session forms, whose chunks `Snakepit.Stream` takes).

  A call's life:

  1. `prepare/4` checks the command, the args and the options
     (`Snakepit.CallOptions`, against the pool's defaults) and gives a
     `%Snakepit.Call{}`. Nothing is sent if anything is wrong.
  2. `submit/2` hands the encoded call to the pool's native core, from the
     caller's own process: no pool process sits on the path. Encoding runs
     on the caller's scheduler, and moves to a dirty scheduler when the
     arguments are large (the NIF says `:dirty` and it is done again there).
     The answer comes back as a message tagged with a ref the caller made.
  3. A plain call waits for that message (`run/2`): within `:timeout`, with
     the retry loop of `Snakepit.Retry` around it when `:retry` is set, each
     attempt inside a `[:snakepit, :call, ...]` telemetry span. A stream's
     chunks are taken by `Snakepit.Stream`, inside a
     `[:snakepit, :stream, ...]` span.

  Giving up is the same for both. When `:queue_timeout` passes before a
  worker started the call, `dequeue/5` takes it back (from the queue, or
  from the pipe of a worker that has not started it); if the worker has
  started it, the call goes on. When `:timeout` passes, `cancel/4` tells
  the pool; if the answer was already sent it is in the mailbox or on its
  way, and it is taken from there (a late answer is never left behind for
  another receive to find).
  """

  alias Snakepit.{CallOptions, Error, Native}

  # After a cancel that reports the answer as sent, how long to wait for
  # it, defensively: it is in the mailbox or arriving.
  @reply_in_flight_wait 5_000

  @enforce_keys [
    :pool,
    :handle,
    :tool,
    :args,
    :session,
    :correlation_id,
    :timeout,
    :queue_timeout,
    :retry,
    :chunk_timeout,
    :window
  ]
  defstruct @enforce_keys

  @typedoc "A checked call, ready to submit."
  @type t :: %__MODULE__{
          pool: atom(),
          handle: reference(),
          tool: String.t(),
          args: map(),
          session: {String.t(), Snakepit.affinity()} | nil,
          correlation_id: String.t(),
          timeout: timeout(),
          queue_timeout: timeout(),
          retry: keyword() | nil,
          chunk_timeout: timeout() | nil,
          window: pos_integer() | nil
        }

  @typedoc "How a call ended, as its caller gets it."
  @type result :: {:ok, term()} | {:error, Error.t()}

  @doc """
  Checks a call of `kind` (`:call` or `:stream`); errors carry the call's
  correlation id once it is known.
  """
  @spec prepare(term(), term(), term(), CallOptions.kind()) :: {:ok, t()} | {:error, Error.t()}
  def prepare(command, args, opts, kind) do
    with {:ok, o} <- CallOptions.resolve(opts, kind) do
      with {:ok, tool} <- check_command(command),
           {:ok, args} <- check_args(args) do
        # The resolved options are this struct's fields but the two below.
        {:ok, struct!(__MODULE__, Map.merge(o, %{tool: tool, args: args}))}
      else
        {:error, error} -> {:error, Snakepit.Correlation.tag(error, o.correlation_id)}
      end
    end
  end

  @doc """
  Runs a plain call to its end: its result, or its error tagged with its
  correlation id. `raising?` says the caller raises the error (`execute!/3`),
  which makes the telemetry span end in `:exception`.
  """
  @spec run(t(), boolean()) :: result()
  def run(%__MODULE__{retry: nil} = c, raising?) do
    c |> attempt(c.timeout, 1, raising?) |> tagged(c)
  end

  def run(%__MODULE__{} = c, raising?) do
    counter = :counters.new(1, [])

    fn budget ->
      :counters.add(counter, 1, 1)
      attempt(c, min(budget, c.timeout), :counters.get(counter, 1), raising?)
    end
    |> Snakepit.Retry.run(Keyword.put(c.retry, :timeout, c.timeout))
    |> tagged(c)
  end

  defp tagged({:error, %Error{} = error}, c),
    do: {:error, Snakepit.Correlation.tag(error, c.correlation_id)}

  defp tagged(result, _c), do: result

  # One attempt, inside its telemetry span when `:telemetry` is loaded.
  defp attempt(c, timeout, n, raising?) do
    case span_start(c, :call, %{attempt: n}) do
      nil ->
        c |> call(timeout) |> elem(0)

      span ->
        {result, meta} = call(c, timeout)
        call_span_stop(span, result, meta, raising?)
        result
    end
  end

  # make_ref/0 and the receive stay in one function, so the VM only scans
  # messages that arrived after the ref was made (the receive optimization).
  # Returns the result and the answer's `{os_pid, queue_ns, run_ns}` (or nil).
  defp call(c, timeout) do
    tag = make_ref()

    case submit(c, tag) do
      {:error, error} ->
        {{:error, error}, nil}

      {:ok, request_id} ->
        # :infinity, an atom, sorts after every integer: min/2 picks the bound.
        queue_timeout = min(c.queue_timeout, timeout)

        receive do
          {^tag, status, frame, offset, meta} -> {decode(status, frame, offset), meta}
          {^tag, :error, reason} -> {{:error, Error.from_native(reason)}, nil}
        after
          queue_timeout ->
            if queue_timeout == timeout,
              do: timed_out(c, tag, request_id, timeout, nil),
              else: queue_timed_out(c, tag, request_id, timeout, queue_timeout)
        end
    end
  end

  defp queue_timed_out(c, tag, request_id, timeout, queue_timeout) do
    case dequeue(c, request_id, queue_timeout) do
      {:error, _} = error ->
        {error, nil}

      :continue ->
        rest = if timeout == :infinity, do: :infinity, else: timeout - queue_timeout

        receive do
          {^tag, status, frame, offset, meta} -> {decode(status, frame, offset), meta}
          {^tag, :error, reason} -> {{:error, Error.from_native(reason)}, nil}
          {^tag, :dequeued} -> {queue_timeout_error(c, queue_timeout), nil}
        after
          rest -> timed_out(c, tag, request_id, timeout, queue_timeout)
        end
    end
  end

  defp timed_out(c, tag, request_id, timeout, queue_timeout) do
    case cancel(c, tag, request_id, :timeout) do
      {:answer, {^tag, status, frame, offset, meta}} ->
        {decode(status, frame, offset), meta}

      {:answer, {^tag, :error, reason}} ->
        {{:error, Error.from_native(reason)}, nil}

      {:answer, {^tag, :dequeued}} ->
        {queue_timeout_error(c, queue_timeout), nil}

      :lost ->
        {{:error,
          Error.transport("the reply to #{Error.excerpt(c.tool)} was lost", %{tool: c.tool})}, nil}

      given_up ->
        queued = given_up == :cancelled
        details = %{tool: c.tool, timeout: timeout, queue: queued}
        details = if queued, do: Map.put(details, :retryable, true), else: details
        message = "no answer from #{Error.excerpt(c.tool)} within #{timeout} ms"
        {{:error, Error.timeout(message, details)}, nil}
    end
  end

  @doc """
  Submits `c`, its answer to come tagged `tag`: `{:ok, request_id}`, or the
  error that refused it (a full queue, an open circuit, a stopped pool).
  """
  @spec submit(t(), reference()) :: {:ok, pos_integer()} | {:error, Error.t()}
  def submit(%__MODULE__{} = c, tag) do
    %{handle: handle, tool: tool, args: args, session: session} = c

    submitted =
      case backend(handle).submit(handle, tag, tool, args, session, c.window, c.correlation_id) do
        :dirty -> Native.submit_dirty(handle, tag, tool, args, session, c.window, c.correlation_id)
        other -> other
      end

    case submitted do
      {:ok, request_id} ->
        {:ok, request_id}

      {:ok, request_id, :new_session} ->
        {id, _affinity} = c.session

        Snakepit.Telemetry.emit(
          [:snakepit, :session, :created],
          %{system_time: System.system_time()},
          %{pool: c.pool, session_id: id}
        )

        {:ok, request_id}

      {:error, reason} ->
        error = Error.from_native(reason)

        if error.details[:queued] do
          Snakepit.Telemetry.emit(
            [:snakepit, :pool, :queue_full],
            %{queued: error.details[:queued], limit: error.details[:limit]},
            %{pool: c.pool, command: c.tool, correlation_id: c.correlation_id}
          )
        end

        {:error, error}
    end
  end

  @doc """
  The call's `:queue_timeout` passed: takes it back from the queue, or
  from the pipe of a worker that has not started it (the worker then gives
  it back, as a `{tag, :dequeued}` message, which the caller turns into
  `queue_timeout_error/2`). `:continue` when it may still run: it is
  waiting in a pipe, or running.
  """
  @spec dequeue(t(), pos_integer(), timeout()) :: :continue | {:error, Error.t()}
  def dequeue(%__MODULE__{} = c, request_id, queue_timeout) do
    case backend(c.handle).dequeue(c.handle, request_id) do
      :dequeued -> queue_timeout_error(c, queue_timeout)
      _pending_or_started -> :continue
    end
  end

  @doc "The `:timeout` error of a call that no worker started in time."
  @spec queue_timeout_error(t(), timeout() | nil) :: {:error, Error.t()}
  def queue_timeout_error(%__MODULE__{tool: tool}, queue_timeout) do
    {:error,
     Error.timeout(
       "no worker was free for #{Error.excerpt(tool)} within #{queue_timeout} ms (:queue_timeout)",
       %{tool: tool, timeout: queue_timeout, queue: true, retryable: true}
     )}
  end

  @doc """
  Gives the call up: `:timeout` (its time is over; a running call is
  cancelled) or `:halt` (a stream's consumer stopped; its generator is
  closed). Returns how: `:cancelled` (it had not started), `:running` (the
  worker is told), or, when its final answer was already sent, that answer
  taken from the mailbox (`{:answer, message}`, a stream's chunks before it
  dropped) or `:lost` if it does not come.
  """
  @spec cancel(t(), reference(), pos_integer(), :timeout | :halt) ::
          :cancelled | :running | {:answer, tuple()} | :lost
  def cancel(%__MODULE__{handle: handle}, tag, request_id, how) do
    given_up =
      case how do
        :timeout -> backend(handle).cancel(handle, request_id)
        :halt -> backend(handle).stream_cancel(handle, request_id)
      end

    case given_up do
      :replied -> await_final(tag)
      other -> other
    end
  end

  defp await_final(tag) do
    receive do
      {^tag, :chunk, _frame, _offset} -> await_final(tag)
      {^tag, _status, _frame, _offset, _meta} = answer -> {:answer, answer}
      {^tag, :error, _reason} = answer -> {:answer, answer}
      {^tag, :dequeued} = answer -> {:answer, answer}
    after
      @reply_in_flight_wait -> :lost
    end
  end

  @doc """
  Decodes an answer's frame in the caller (see
  `native/snakepit_nif/src/codec/mod.rs` for why here): `:result` and `:done`
  are values; `:python_error` (the tool failed) and `:validation_error`
  (the worker refused the call) become the worker's `Snakepit.Error`.
  """
  @spec decode(atom(), binary() | {:value, term()} | {:error, Error.t()}, non_neg_integer()) ::
          result()
  # A pool of an Elixir adapter (Snakepit.BeamPool) answers with values.
  def decode(_status, {:value, value}, _offset), do: {:ok, value}
  def decode(_status, {:error, %Error{} = error}, _offset), do: {:error, error}

  def decode(status, frame, offset) do
    case {status, Native.decode_frame(frame, offset)} do
      {:python_error, {:ok, body}} ->
        {:error, Error.from_python(body, :python_error)}

      {:validation_error, {:ok, body}} ->
        {:error, Error.from_python(body, :validation)}

      {_, {:ok, value}} ->
        {:ok, value}

      # Its shared-memory segments were over the pool's :shm_max_bytes.
      {_, {:refused, reason}} ->
        {:error, Error.from_native(reason)}

      {_, {:error, why}} ->
        {:error, Error.transport("the worker's answer could not be decoded: #{why}")}
    end
  end

  @doc """
  The module that serves a pool's `handle`: `Snakepit.Native` for Python
  (and `:command`) pools, `Snakepit.BeamPool` for a pool of an Elixir
  adapter. Both take the handle first, with the same arguments.
  """
  @spec backend(reference() | Snakepit.BeamPool.handle()) :: module()
  def backend({:beam, _}), do: Snakepit.BeamPool
  def backend(_handle), do: Native

  ## Telemetry

  @doc """
  Starts the telemetry span of a call (`kind` `:call`) or a stream
  (`:stream`), if `:telemetry` is loaded: `nil` when it is not.
  """
  @spec span_start(t(), :call | :stream, map()) :: {atom(), map(), integer()} | nil
  def span_start(%__MODULE__{} = c, kind, extra) do
    if Snakepit.Telemetry.enabled?() do
      metadata =
        Map.merge(
          %{
            pool: c.pool,
            command: c.tool,
            session_id: with({id, _} <- c.session, do: id),
            correlation_id: c.correlation_id
          },
          extra
        )

      Snakepit.Telemetry.emit(
        [:snakepit, kind, :start],
        Snakepit.Telemetry.start_measurements(),
        metadata
      )

      {kind, metadata, System.monotonic_time()}
    end
  end

  @doc """
  Ends a span with `:stop`: `outcome` is `:ok`, `:halted` or the error.
  `measurements` are added to its duration.
  """
  @spec span_stop({atom(), map(), integer()} | nil, :ok | :halted | Error.t(), map(), map()) ::
          :ok
  def span_stop(nil, _outcome, _measurements, _metadata), do: :ok

  def span_stop({kind, metadata, started}, outcome, measurements, extra) do
    {outcome, error} =
      case outcome do
        %Error{} = error -> {error.category, Snakepit.Redact.redact(error)}
        other -> {other, nil}
      end

    measurements = Map.put(measurements, :duration, System.monotonic_time() - started)
    metadata = metadata |> Map.merge(extra) |> Map.merge(%{outcome: outcome, error: error})
    Snakepit.Telemetry.emit([:snakepit, kind, :stop], measurements, metadata)
  end

  @doc "Ends a span with `:exception`."
  @spec span_exception({atom(), map(), integer()} | nil, map(), atom(), term(), list()) :: :ok
  def span_exception(nil, _measurements, _kind, _reason, _stacktrace), do: :ok

  def span_exception({span_kind, metadata, started}, measurements, kind, reason, stacktrace) do
    Snakepit.Telemetry.emit(
      [:snakepit, span_kind, :exception],
      Map.put(measurements, :duration, System.monotonic_time() - started),
      Map.merge(metadata, %{kind: kind, reason: reason, stacktrace: stacktrace})
    )
  end

  # A plain call's span also carries where its time went.
  defp call_span_stop(span, {:error, error}, _meta, true) do
    span_exception(span, %{}, :error, Snakepit.Redact.redact(error), [])
  end

  defp call_span_stop({kind, metadata, started}, result, meta, _raising?) do
    {os_pid, queue_ns, run_ns} = meta || {nil, nil, nil}

    measurements = %{
      duration: System.monotonic_time() - started,
      queue_time: native_time(queue_ns),
      run_time: native_time(run_ns)
    }

    {outcome, error} =
      case result do
        {:ok, _} -> {:ok, nil}
        {:error, error} -> {error.category, Snakepit.Redact.redact(error)}
      end

    metadata = Map.merge(metadata, %{worker_os_pid: os_pid, outcome: outcome, error: error})
    Snakepit.Telemetry.emit([:snakepit, kind, :stop], measurements, metadata)
  end

  defp native_time(nil), do: nil
  defp native_time(ns), do: System.convert_time_unit(ns, :nanosecond, :native)

  ## Checks

  defp check_command(command) when is_binary(command), do: {:ok, command}

  defp check_command(command) when is_atom(command) and command not in [nil, true, false],
    do: {:ok, Atom.to_string(command)}

  defp check_command(command),
    do:
      {:error,
       Error.validation("the command must be a string or an atom, got: #{Error.excerpt(command)}")}

  defp check_args(args) when is_map(args), do: {:ok, args}

  defp check_args(args) when is_list(args) do
    if Keyword.keyword?(args),
      do: {:ok, Map.new(args)},
      else: args_refused(args)
  end

  defp check_args(args), do: args_refused(args)

  defp args_refused(args),
    do:
      {:error,
       Error.validation("args must be a map or a keyword list, got: #{Error.excerpt(args)}")}
end
