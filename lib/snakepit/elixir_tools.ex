defmodule Snakepit.ElixirTools do
  @moduledoc ~S"""
  Python calls Elixir: the functions a pool's Python tools may call with
  `ctx.call_elixir(name, **kwargs)` (or `await ctx.call_elixir_async(...)`).

      defmodule MyApp.Users do
        def lookup(%{"id" => id}), do: {:ok, %{name: "user #{id}"}}
      end

      {Snakepit.Pool, name: :ml, adapter: "my_pkg.Adapter",
       elixir_tools: %{"lookup_user" => {MyApp.Users, :lookup}}}

      # or at run time, a {module, function} or a 1-arity function:
      :ok = Snakepit.register_tool(:ml, "now", fn _args -> {:ok, System.os_time()} end)

  ```python
  @tool
  def greet(self, ctx: Context, user_id: int) -> str:
      user = ctx.call_elixir("lookup_user", id=user_id)        # {"name": "user 7"}
      try:
          ctx.call_elixir("now", _timeout=0.5)                 # seconds
      except ElixirError as e:                                 # e.category, e.message, e.details
          ...
      return f"hello {user['name']}"
  ```

  ## The function

  A function gets one argument, the map of the Python keyword arguments
  (keys are strings, values decoded as a call's results are: a numpy array
  is a `%Snakepit.Tensor{}`, bytes a binary). It returns:

  - `{:ok, value}` or `:ok` (`None`): `value` is what `call_elixir`
    returns in Python, encoded as a call's arguments are (a
    `%Snakepit.Tensor{}` becomes a numpy array);
  - `{:error, %Snakepit.Error{}}`: `call_elixir` raises
    `snakepit_bridge.ElixirError` with its `category`, `message` and
    `details`;
  - `{:error, reason}`: `ElixirError` with category `"elixir_error"`, the
    reason as the message (a string as is, an atom's name, an exception's
    message, else inspected) and in `details["reason"]`;
  - anything else: that value, as with `{:ok, value}`.

  A raise, an exit or a throw in the function is an `ElixirError` too, of
  category `"elixir_error"` (or the category of a raised
  `%Snakepit.Error{}`), whose details have the `"kind"` and the
  `"stacktrace"`. A name no function is registered under is an
  `ElixirError` of category `"validation"`. A value that cannot be sent
  (a pid, a reference...) is one of category `"validation"` naming where
  it is in the result.

  ## Where and how long it runs

  Each call runs in a process of its own, spawned (and linked) by this
  module's process of the pool, never on the pool's native threads (its
  `Logger` metadata has `:snakepit_pool` and `:snakepit_worker`, the id of
  the worker whose tool called), with the call's timeout: `ctx.call_elixir(name, _timeout=seconds)`, else the
  pool's `:elixir_tool_timeout` (5 s by default). Past it the process is
  killed and Python gets an `ElixirError` of category `"timeout"`. When the
  Python side stops waiting (the tool's call was cancelled) or its worker
  dies, the process is killed too. Arguments and results cross with the
  codec of calls (no shared memory: they must fit `:max_frame_bytes`), the
  reply on the worker's control pipe (see `docs/protocol.md`).

  ## Calling the pool back (reentrancy)

  The function may call the pool itself (`Snakepit.execute/3`, to run
  another tool). That call needs a worker other than the one waiting for
  the function: while a worker waits in `call_elixir`, nothing more is
  written behind its running call (with `:pipeline_depth` > 1 the nested
  call could otherwise land behind the very call that waits for it), and
  the calls already waiting in its pipe are taken back for other workers.

  So a chain Python → Elixir → Python … of depth `d` (`d` tools waiting in
  `call_elixir` at once, each for a function that calls the pool) needs
  `d` workers busy plus one free for the innermost call; concurrent chains
  add up. With `:concurrency` > 1, count slots instead of workers: a
  waiting tool holds one slot, and the nested call may start in a free
  slot of the same worker (a chain of depth `d` runs on one worker with
  `d + 1` slots). When none is free, the nested call waits in the queue; it
  never runs behind its caller's own worker. Nothing hangs silently: the
  function's timeout (or the outer call's, whichever comes first) ends the
  wait with a `"timeout"` `ElixirError` in Python (or a `:timeout` error in
  Elixir), the function's process is killed, and its nested call is given
  up with it. A nested call in the same session as the waiting call
  (`:strict` or `:fail_fast` affinity) can only run on that busy worker,
  so it always ends that way: make nested calls outside the session.

  Functions registered with `Snakepit.register_tool/3` live as long as the
  pool's process; those of `:elixir_tools` are there from its start.
  """

  use GenServer

  alias Snakepit.{Error, Native}

  @typedoc "A registered function: `{module, function}` (called with one argument) or a 1-arity fun."
  @type fun_spec :: {module(), atom()} | (map() -> term())

  @typedoc "The reply body sent to Python: a value, or an error as a map of strings."
  @type reply :: {:ok, term()} | {:error, %{String.t() => term()}}

  # The longest name the wire carries (snakepit_wire::protocol::MAX_ELIXIR_NAME).
  @max_name 255

  ## API

  @doc false
  # Started by its pool and linked to it, but not as its child: the pool's
  # exit is then a message here, and ends this process quietly (as a
  # shutdown), whatever the pool's reason, which the pool reports itself.
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    GenServer.start(__MODULE__, Keyword.put(opts, :owner, self()), spawn_opt: [:link])
  end

  @doc false
  # The pool's native handle, once `Native.pool_new/2` made it.
  @spec attach(pid(), reference()) :: :ok
  def attach(server, handle), do: GenServer.call(server, {:attach, handle})

  @doc """
  Registers `fun` under `name` for the pool's Python tools (see
  `Snakepit.register_tool/3`). `server` is the pool's process of this
  module.
  """
  @spec register(pid(), String.t() | atom(), fun_spec()) :: :ok | {:error, Error.t()}
  def register(server, name, fun) do
    with {:ok, name} <- check_name(name),
         {:ok, fun} <- check_fun(name, fun) do
      call(server, {:register, name, fun})
    end
  end

  @doc "Removes the function registered under `name`, if any."
  @spec unregister(pid(), String.t() | atom()) :: :ok | {:error, Error.t()}
  def unregister(server, name) do
    with {:ok, name} <- check_name(name), do: call(server, {:unregister, name})
  end

  defp call(server, request) do
    GenServer.call(server, request)
  catch
    :exit, _ -> {:error, Error.pool("the pool stopped")}
  end

  @doc """
  Checks the pool option `:elixir_tools`: a map (or keyword list) of
  names (strings or atoms, 1 to #{@max_name} bytes) to `{module, function}`
  or 1-arity functions. Returns it with string names, or `:error`.

      iex> Snakepit.ElixirTools.check_tools(%{now: {System, :os_time}})
      {:ok, %{"now" => {System, :os_time}}}
      iex> Snakepit.ElixirTools.check_tools(%{"f" => fn -> :no_arg end})
      :error
  """
  @spec check_tools(term()) :: {:ok, %{String.t() => fun_spec()}} | :error
  def check_tools(tools) when is_map(tools) or is_list(tools) do
    Enum.reduce_while(tools, {:ok, %{}}, fn
      {name, fun}, {:ok, acc} ->
        with {:ok, name} <- check_name(name),
             {:ok, fun} <- check_fun(name, fun) do
          {:cont, {:ok, Map.put(acc, name, fun)}}
        else
          _ -> {:halt, :error}
        end

      _other, _acc ->
        {:halt, :error}
    end)
  end

  def check_tools(_tools), do: :error

  defp check_name(name) when is_atom(name) and name not in [nil, true, false],
    do: check_name(Atom.to_string(name))

  defp check_name(name) when is_binary(name) and byte_size(name) in 1..@max_name do
    if String.valid?(name), do: {:ok, name}, else: name_error(name)
  end

  defp check_name(name), do: name_error(name)

  defp name_error(name) do
    {:error,
     Error.validation(
       "an Elixir function's name must be a string or an atom of 1 to #{@max_name} bytes, " <>
         "got: #{Error.excerpt(name)}"
     )}
  end

  defp check_fun(_name, {module, fun}) when is_atom(module) and is_atom(fun),
    do: {:ok, {module, fun}}

  defp check_fun(_name, fun) when is_function(fun, 1), do: {:ok, fun}

  defp check_fun(name, fun) do
    {:error,
     Error.validation(
       "the Elixir function #{inspect(name)} must be {module, function} or a 1-arity " <>
         "function, got: #{Error.excerpt(fun)}"
     )}
  end

  ## Server

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    {:ok,
     %{
       owner: Keyword.fetch!(opts, :owner),
       pool: Keyword.fetch!(opts, :pool),
       tools: Keyword.get(opts, :tools, %{}),
       timeout: Keyword.fetch!(opts, :timeout),
       handle: nil,
       # runner pid => {worker_id, call_id, timer, name}
       running: %{},
       # {worker_id, call_id} => runner pid
       calls: %{}
     }}
  end

  @impl true
  def handle_call({:attach, handle}, _from, state), do: {:reply, :ok, %{state | handle: handle}}

  def handle_call({:register, name, fun}, _from, state),
    do: {:reply, :ok, %{state | tools: Map.put(state.tools, name, fun)}}

  def handle_call({:unregister, name}, _from, state),
    do: {:reply, :ok, %{state | tools: Map.delete(state.tools, name)}}

  @impl true
  def handle_info(
        {:snakepit_elixir_call, worker_id, call_id, _request_id, name, timeout_ms, frame, args_at},
        state
      ) do
    case Map.fetch(state.tools, name) do
      {:ok, fun} ->
        timeout = timeout_ms || state.timeout
        %{handle: handle, pool: pool} = state

        pid =
          spawn_link(fn ->
            Logger.metadata(snakepit_pool: pool, snakepit_worker: worker_id)
            run(handle, worker_id, call_id, name, fun, frame, args_at)
          end)

        timer = Process.send_after(self(), {:elixir_timeout, pid, timeout}, timeout)

        {:noreply,
         %{
           state
           | running: Map.put(state.running, pid, {worker_id, call_id, timer, name}),
             calls: Map.put(state.calls, {worker_id, call_id}, pid)
         }}

      :error ->
        known = state.tools |> Map.keys() |> Enum.sort()

        shown = if known == [], do: "none", else: known |> Enum.take(50) |> Enum.join(", ")

        error =
          error_map(
            "validation",
            "no Elixir function named #{inspect(name)} is registered for pool " <>
              "#{inspect(state.pool)} (registered: #{shown})",
            %{"name" => name}
          )

        send_reply(state.handle, worker_id, call_id, name, {:error, error})
        {:noreply, state}
    end
  end

  def handle_info({:elixir_timeout, pid, timeout}, state) do
    case Map.fetch(state.running, pid) do
      {:ok, {worker_id, call_id, _timer, name}} ->
        stop_runner(pid)

        error =
          error_map(
            "timeout",
            "Elixir function #{inspect(name)} did not return within #{timeout} ms; " <>
              "its process was killed",
            %{"name" => name, "timeout_ms" => timeout}
          )

        send_reply(state.handle, worker_id, call_id, name, {:error, error})
        {:noreply, forget(state, pid)}

      :error ->
        {:noreply, state}
    end
  end

  # The pool is gone: so are the runners (linked to this process).
  def handle_info({:EXIT, owner, _reason}, %{owner: owner} = state),
    do: {:stop, :shutdown, state}

  # A runner ended: :normal once it has replied; anything else (a link to
  # a process that crashed) is replied to here, unless a reply went first.
  def handle_info({:EXIT, pid, reason}, state) do
    case Map.fetch(state.running, pid) do
      {:ok, {worker_id, call_id, timer, name}} ->
        _ = Process.cancel_timer(timer)

        if reason != :normal do
          error =
            error_map(
              "elixir_error",
              "the process running Elixir function #{inspect(name)} exited: " <>
                Error.excerpt(reason),
              %{"name" => name, "kind" => "exit"}
            )

          send_reply(state.handle, worker_id, call_id, name, {:error, error})
        end

        {:noreply, forget(state, pid)}

      :error ->
        {:noreply, state}
    end
  end

  # The worker stopped waiting (its call was cancelled): no reply is wanted.
  def handle_info({:snakepit_elixir_cancel, worker_id, call_id}, state) do
    case Map.fetch(state.calls, {worker_id, call_id}) do
      {:ok, pid} ->
        stop_runner(pid)
        {:noreply, forget(state, pid)}

      :error ->
        {:noreply, state}
    end
  end

  # The worker is gone: nobody waits for its calls.
  def handle_info({:snakepit_elixir_down, worker_id}, state) do
    gone = for {{^worker_id, _}, pid} <- state.calls, do: pid
    Enum.each(gone, &stop_runner/1)
    {:noreply, Enum.reduce(gone, state, &forget(&2, &1))}
  end

  # Anything else (a stray message): this process must not crash, as its
  # pool would stop with it.
  def handle_info(_other, state), do: {:noreply, state}

  defp stop_runner(pid) do
    Process.unlink(pid)
    Process.exit(pid, :kill)
  end

  defp forget(state, pid) do
    case Map.pop(state.running, pid) do
      {{worker_id, call_id, timer, _name}, running} ->
        _ = Process.cancel_timer(timer)
        %{state | running: running, calls: Map.delete(state.calls, {worker_id, call_id})}

      {nil, _} ->
        state
    end
  end

  ## The runner: one process per call

  defp run(handle, worker_id, call_id, name, fun, frame, args_at) do
    reply =
      case decode_args(frame, args_at) do
        {:ok, args} ->
          outcome(invoke(fun, args))

        {:error, why} ->
          {:error,
           error_map(
             "validation",
             "the arguments of Elixir function #{inspect(name)} could not be decoded: #{why}",
             %{"name" => name}
           )}
      end

    send_reply(handle, worker_id, call_id, name, reply)
  end

  defp decode_args(_frame, nil), do: {:ok, %{}}

  defp decode_args(frame, offset) do
    case Native.decode_frame(frame, offset) do
      {:ok, args} when is_map(args) -> {:ok, args}
      {:ok, other} -> {:error, "not a map: #{Error.excerpt(other)}"}
      {:error, why} -> {:error, why}
      {:refused, reason} -> {:error, Error.from_native(reason).message}
    end
  end

  defp invoke(fun, args) do
    case fun do
      {module, function} -> apply(module, function, [args])
      fun -> fun.(args)
    end
  catch
    kind, reason -> {:caught, kind, reason, __STACKTRACE__}
  end

  @doc """
  The reply a function's return value (or what it raised, threw or exited
  with, as `{:caught, kind, reason, stacktrace}`) stands for. See "The
  function" above.

      iex> Snakepit.ElixirTools.outcome({:ok, 1})
      {:ok, 1}
      iex> {:error, e} = Snakepit.ElixirTools.outcome({:error, Snakepit.Error.timeout("late")})
      iex> {e["category"], e["message"]}
      {"timeout", "late"}
      iex> {:error, e} = Snakepit.ElixirTools.outcome({:error, :enoent})
      iex> {e["category"], e["message"]}
      {"elixir_error", "enoent"}
  """
  @spec outcome(term()) :: reply()
  def outcome({:ok, value}), do: {:ok, value}
  def outcome(:ok), do: {:ok, nil}

  def outcome({:error, %Error{} = error}), do: {:error, from_error(error, %{})}

  def outcome({:error, reason}) do
    {:error, error_map("elixir_error", reason_text(reason), %{"reason" => plain(reason)})}
  end

  def outcome({:caught, kind, reason, stacktrace}) do
    details = %{
      "kind" => Atom.to_string(kind),
      "stacktrace" => Exception.format_stacktrace(stacktrace)
    }

    case {kind, reason} do
      {:error, %Error{} = error} ->
        {:error, from_error(error, details)}

      {:error, reason} ->
        exception = Exception.normalize(:error, reason, stacktrace)
        details = Map.put(details, "exception", inspect(exception.__struct__))
        {:error, error_map("elixir_error", Exception.format_banner(:error, exception), details)}

      {kind, reason} ->
        {:error, error_map("elixir_error", Exception.format_banner(kind, reason), details)}
    end
  end

  def outcome(value), do: {:ok, value}

  defp from_error(%Error{} = error, extra) do
    error_map(Atom.to_string(error.category), error.message, Map.merge(plain(error.details), extra))
  end

  defp reason_text(reason) when is_binary(reason), do: reason
  defp reason_text(reason) when is_atom(reason), do: Atom.to_string(reason)
  defp reason_text(reason) when is_exception(reason), do: Exception.message(reason)
  defp reason_text(reason), do: Error.excerpt(reason)

  defp error_map(category, message, details) do
    %{"category" => category, "message" => message, "details" => details}
  end

  # Details as data Python can receive: what the codec refuses (pids,
  # references, functions, improper lists, huge integers...) as its text.
  defp plain(%Snakepit.Tensor{} = tensor), do: tensor
  defp plain(%_{} = struct), do: inspect(struct)
  defp plain(map) when is_map(map), do: Map.new(map, fn {k, v} -> {plain_key(k), plain(v)} end)
  defp plain(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> plain()

  defp plain(list) when is_list(list) do
    if proper?(list), do: Enum.map(list, &plain/1), else: inspect(list)
  end

  defp plain(int)
       when is_integer(int) and int >= -0x8000_0000_0000_0000 and int <= 0xFFFF_FFFF_FFFF_FFFF,
       do: int

  defp plain(term) when is_atom(term) or is_float(term) or is_binary(term), do: term
  defp plain(term), do: inspect(term)

  # Keys as strings, so that :x and "x" cannot collide on the way.
  defp plain_key(key) when is_binary(key), do: key
  defp plain_key(key) when is_atom(key), do: Atom.to_string(key)
  defp plain_key(key), do: inspect(key)

  defp proper?([]), do: true
  defp proper?([_ | tail]), do: proper?(tail)
  defp proper?(_), do: false

  # Sends the reply; one that cannot be encoded is replaced by an error
  # saying why, and an error whose details cannot be by one without them.
  defp send_reply(handle, worker_id, call_id, name, reply) do
    case native_reply(handle, worker_id, call_id, reply) do
      {:error, why} ->
        fallback =
          case reply do
            {:ok, _} ->
              error_map(
                "validation",
                "the result of Elixir function #{inspect(name)} cannot be sent: #{why}",
                %{"name" => name}
              )

            {:error, error} ->
              %{error | "details" => %{"details_omitted" => why}}
          end

        case native_reply(handle, worker_id, call_id, {:error, fallback}) do
          {:error, _} ->
            message = "the error of the Elixir function cannot be sent: #{why}"

            _ =
              native_reply(
                handle,
                worker_id,
                call_id,
                {:error, error_map("elixir_error", message, %{})}
              )

            :ok

          _sent_or_stale ->
            :ok
        end

      _sent_or_stale ->
        :ok
    end
  end

  defp native_reply(handle, worker_id, call_id, reply) do
    case Native.elixir_reply(handle, worker_id, call_id, reply) do
      :dirty -> Native.elixir_reply_dirty(handle, worker_id, call_id, reply)
      other -> other
    end
  end
end
