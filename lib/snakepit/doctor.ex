defmodule Snakepit.Doctor do
  @moduledoc """
  The checks of `mix snakepit.doctor`, as functions: can this machine run
  the pools of `config :snakepit`?

      Snakepit.Doctor.run()
      #=> [%Snakepit.Doctor.Check{name: "native library", status: :ok, ...}, ...]

  The checks, in order:

  - `config :snakepit` is valid (`Snakepit.Config.pools_from_env/1`), and
    which pools it configures. With none, the bundled demo adapter
    (`snakepit_bridge.examples.demo.DemoAdapter`) is checked
    instead;
  - the NIF is loaded (`priv/native/libsnakepit_nif.so`) and the worker
    shepherd (`priv/native/snakepit_shepherd`) is executable;
  - when a pool's `:python` is a virtualenv (its directory, or an
    interpreter in one; see `Snakepit.Venv`): that the directory exists
    and has an interpreter (`venv`), whose `fix:` says how to make or
    recreate it; the codec checks below then say which `pip` installs
    into it;
  - for each pool's Python (deduplicated: pools with the same `:python`,
    `:python_path`, `:env` and `:cwd` share these checks): the interpreter
    is found as the pool finds it, its version is at least 3.9, and with
    the `PYTHONPATH`, environment and working directory a worker gets it
    imports `snakepit_bridge` (from Snakepit's own `priv/python`), a
    MessagePack codec (`ormsgpack` or `msgpack`; one is required), and
    optionally `numpy`;
  - each pool's adapter, in a throwaway pool: the pool's own options with
    `size: 1` and a unique name is started (which proves that the adapter
    imports and is constructed, and that the handshake works), called with
    the built-in `ping` and `describe` tools, and stopped.

  A pool that runs a `:command` (a program in any language) has no Python
  to check: its program is found as the pool finds it (check `command`),
  then started in a throwaway pool, which proves that it runs and finishes
  its handshake (check `handshake`; no tool is called).

  Only what is checked is started: not the application, nor the configured
  pools. A failing check carries a `:hint` that says how to fix it. Checks
  that cannot run because an earlier one failed are `:skipped`.
  """

  alias Snakepit.{Config, Error, Native, Venv}

  @demo_adapter "snakepit_bridge.examples.demo.DemoAdapter"
  @min_python {3, 9}
  @probe_timeout 30_000

  defmodule Check do
    @moduledoc """
    The result of one check. `:status` is `:ok`; `:error` for a required
    check that failed; `:warning` for an optional one (or something worth
    knowing that does not stop a pool); `:skipped` when an earlier failure
    made it meaningless. `:hint` says how to fix a failure, `:details` has
    more lines (a Python traceback) shown with `--verbose`.
    """
    @enforce_keys [:name, :status]
    defstruct [:name, :status, detail: "", hint: nil, details: nil]

    @type status :: :ok | :error | :warning | :skipped
    @type t :: %__MODULE__{
            name: String.t(),
            status: status(),
            detail: String.t(),
            hint: String.t() | nil,
            details: String.t() | nil
          }
  end

  @typedoc """
  Options of `run/1`:

  - `:python` - check this interpreter instead of each pool's `:python`;
  - `:pools` - `[{name, options}]` to check instead of `config :snakepit`'s;
  - `:app_env` - the application environment to read pools from (default
    `Application.get_all_env(:snakepit)`);
  - `:on_check` - a function called with each `Check` as soon as it is
    done (the task prints with it);
  - `:on_note` - a function called with notes about what is checked (e.g.
    that the demo adapter stands in for missing pools);
  - `:quiet` - drop the throwaway pools' log messages (default `true`).
  """
  @type option ::
          {:python, String.t() | nil}
          | {:quiet, boolean()}
          | {:pools, [{atom(), keyword()}]}
          | {:app_env, keyword()}
          | {:on_check, (Check.t() -> any())}
          | {:on_note, (String.t() -> any())}

  @doc "The adapter checked when no pool is configured."
  @spec demo_adapter() :: String.t()
  def demo_adapter, do: @demo_adapter

  @doc """
  Runs every check and returns them in order. See the moduledoc.
  """
  @spec run([option()]) :: [Check.t()]
  def run(opts \\ []) do
    on_check = Keyword.get(opts, :on_check, fn _ -> :ok end)
    on_note = Keyword.get(opts, :on_note, fn _ -> :ok end)
    quiet? = Keyword.get(opts, :quiet, true)

    emit = fn check ->
      _ = on_check.(check)
      check
    end

    {pools, config_checks, source} = pools_to_check(opts, on_note)
    source = if opts[:python], do: :flag, else: source
    pools = override_python(pools, opts[:python])
    config_checks = Enum.map(config_checks, emit)

    native = Enum.map(native_checks(), emit)
    native_ok? = Enum.all?(native, &(&1.status == :ok))

    stop = start_support()

    try do
      groups = Enum.group_by(pools, &python_env_key/1)
      multiple? = map_size(groups) > 1

      {python_checks, usable} =
        groups
        |> Enum.sort_by(fn {_key, group} -> Enum.find_index(pools, &(&1 == hd(group))) end)
        |> Enum.map_reduce(%{}, fn {key, group}, usable ->
          if multiple?,
            do:
              on_note.(
                "#{if match?({:command, _, _, _}, key), do: "Command", else: "Python"} of " <>
                  "#{plural_word(length(group), "pool")} #{pool_names(group)}:"
              )

          {checks, ok?} =
            case key do
              {:command, _, _, _} ->
                command_checks(elem(hd(group), 1), emit: emit, pools: pool_names(group))

              _ ->
                python_checks(elem(hd(group), 1),
                  emit: emit,
                  pools: pool_names(group),
                  source: source
                )
            end

          {checks, Map.put(usable, key, ok?)}
        end)

      if multiple?, do: on_note.("Adapters:")

      adapter_checks =
        for {name, pool_opts} = pool <- pools do
          cond do
            not native_ok? ->
              emit.(skipped("adapter", name, "the native library is not usable"))

            not Map.fetch!(usable, python_env_key(pool)) and command?(pool_opts) ->
              emit.(skipped("handshake", name, "its command is not usable"))

            not Map.fetch!(usable, python_env_key(pool)) ->
              emit.(skipped("adapter", name, "its Python is not usable"))

            true ->
              emit.(adapter_check(name, pool_opts, quiet: quiet?))
          end
        end

      config_checks ++ native ++ List.flatten(python_checks) ++ adapter_checks
    after
      stop.()
    end
  end

  @doc "True if a required check failed."
  @spec failed?([Check.t()]) :: boolean()
  def failed?(checks), do: Enum.any?(checks, &(&1.status == :error))

  ## Which pools

  @doc """
  The pools to check: `{pools, checks, source}`, where `checks` reports on
  `config :snakepit`. With no pool configured (or a configuration that is
  refused), the demo adapter's pool stands in, named `:demo`, and
  `source` is `:demo` (else `:config`).
  """
  @spec pools_to_check([option()], (String.t() -> any())) ::
          {[{atom(), keyword()}], [Check.t()], :config | :demo}
  def pools_to_check(opts \\ [], on_note \\ fn _ -> :ok end) do
    case Keyword.fetch(opts, :pools) do
      {:ok, pools} ->
        {pools, [], :config}

      :error ->
        env = Keyword.get_lazy(opts, :app_env, fn -> Application.get_all_env(:snakepit) end)
        configured_pools(env, on_note)
    end
  end

  defp configured_pools(env, on_note) do
    # pooling_enabled: false keeps the application from starting the pools,
    # not the pools from being meant to work: they are checked all the same.
    case Config.pools_from_env(Keyword.delete(env, :pooling_enabled)) do
      {:ok, []} ->
        on_note.(
          "No pools in config :snakepit: checking the bundled demo adapter " <>
            "#{@demo_adapter} instead."
        )

        {[demo_pool()], [], :demo}

      {:ok, pools} ->
        disabled =
          if env[:pooling_enabled] == false,
            do: " (pooling_enabled: false: the application starts none of them)",
            else: ""

        check = %Check{
          name: "config",
          status: :ok,
          detail:
            "config :snakepit: #{plural(length(pools), "pool")} #{pool_names(pools)}#{disabled}"
        }

        {pools, [check], :config}

      {:error, %Error{} = error} ->
        on_note.("config :snakepit is refused: checking the bundled demo adapter instead.")

        check = %Check{
          name: "config",
          status: :error,
          detail: error.message,
          hint:
            "fix config :snakepit (in config/*.exs): the application refuses to start with it. " <>
              "Every key and pool option is documented in Snakepit.Config."
        }

        {[demo_pool()], [check], :demo}
    end
  end

  defp demo_pool, do: {:demo, [name: :demo, adapter: @demo_adapter]}

  defp override_python(pools, nil), do: pools

  defp override_python(pools, python) do
    for {name, opts} <- pools,
        do: {name, if(command?(opts), do: opts, else: Keyword.put(opts, :python, python))}
  end

  # A pool that runs a :command, not the Python bridge.
  defp command?(pool_opts), do: Keyword.get(pool_opts, :command) != nil

  ## Native library

  @doc "The NIF and the shepherd: two checks."
  @spec native_checks() :: [Check.t()]
  def native_checks do
    nif =
      case Native.status() do
        :ok ->
          %Check{
            name: "native library",
            status: :ok,
            detail: "#{short_path(nif_path())} loaded"
          }

        {:error, message} ->
          %Check{
            name: "native library",
            status: :error,
            detail: message,
            hint:
              "build it: `mix compile` in snakepit's repo, `mix deps.compile snakepit --force` " <>
                "in a project that depends on it (cargo, Rust >= 1.91, is needed)"
          }
      end

    [nif, shepherd_check()]
  end

  defp nif_path, do: Path.join(:code.priv_dir(:snakepit), "native/libsnakepit_nif.so")

  defp shepherd_check do
    path = Native.shepherd()

    hint =
      "rebuild it: `mix compile --force` in snakepit's repo, `mix deps.compile snakepit --force` " <>
        "in a project that depends on it"

    case File.stat(path) do
      {:ok, %{type: :regular, mode: mode}} when Bitwise.band(mode, 0o111) != 0 ->
        %Check{name: "shepherd", status: :ok, detail: "#{short_path(path)} is executable"}

      {:ok, %{type: :regular}} ->
        %Check{name: "shepherd", status: :error, detail: "#{path} is not executable", hint: hint}

      {:ok, %{type: type}} ->
        %Check{name: "shepherd", status: :error, detail: "#{path} is a #{type}", hint: hint}

      {:error, reason} ->
        %Check{
          name: "shepherd",
          status: :error,
          detail: "#{path}: #{:file.format_error(reason)}",
          hint: hint
        }
    end
  end

  ## Python

  # Pools whose workers would see the same interpreter and modules.
  defp python_env_key({_name, opts}) do
    case Config.validate(opts) do
      {:ok, %{command: [_ | _]} = config} -> {:command, config.command, config.env, config.cwd}
      {:ok, config} -> {config.python, config.python_path, config.env, config.cwd}
      {:error, _} -> {:invalid, opts}
    end
  end

  @doc """
  The checks of one pool's Python, run as its workers would be: found,
  version, `snakepit_bridge`, the codecs and numpy. Returns `{checks,
  usable?}`.

  Options: `:emit` is called
  with each check as it is done; `:pools` names the pools concerned (for
  hints); `:source` says where the interpreter came from, for the hint of
  a missing one: `:config` (default), `:flag` (`--python`) or `:demo` (no
  pool configured).
  """
  @spec python_checks(keyword(), keyword()) :: {[Check.t()], boolean()}
  def python_checks(pool_opts, opts \\ []) do
    emit = Keyword.get(opts, :emit, & &1)

    pools = %{
      names: Keyword.get(opts, :pools, ":default"),
      source: Keyword.get(opts, :source, :config)
    }

    case Config.validate(pool_opts) do
      {:error, error} ->
        {[emit.(%Check{name: "python", status: :error, detail: error.message})], false}

      {:ok, config} ->
        case venv_check(config.python, pools) do
          {%Check{status: :error} = check, _venv} ->
            {[emit.(check)], false}

          {venv, dir} ->
            venv = if venv, do: [emit.(venv)], else: []
            {checks, ok?} = interpreter_checks(config, Map.put(pools, :venv, dir), emit)
            {venv ++ checks, ok?}
        end
    end
  end

  @doc """
  The check of a `:command` pool's program, found as the pool finds it
  (`Snakepit.Config.find_command/2`). Returns `{[check], usable?}`.
  Options: `:emit` is called with the check; `:pools` names the pools
  concerned (for the hint).
  """
  @spec command_checks(keyword(), keyword()) :: {[Check.t()], boolean()}
  def command_checks(pool_opts, opts \\ []) do
    emit = Keyword.get(opts, :emit, & &1)
    pools = Keyword.get(opts, :pools, ":default")

    check =
      with {:ok, %{command: [program | _]} = config} <- Config.validate(pool_opts),
           {:ok, path} <- Config.find_command(program, config.cwd) do
        detail = if path == program, do: path, else: "#{program} is #{path}"
        %Check{name: "command", status: :ok, detail: detail}
      else
        {:error, %Error{} = error} ->
          %Check{name: "command", status: :error, detail: error.message}

        {:error, why} ->
          program = hd(pool_opts[:command])

          problem =
            case why do
              :not_on_path -> "was not found on the PATH (#{System.get_env("PATH", "")})"
              :not_found -> "does not exist"
              :not_executable -> "is not an executable file"
            end

          %Check{
            name: "command",
            status: :error,
            detail: "#{program} #{problem}",
            hint:
              "install it, or fix the :command of pool #{pools}: a name is looked up on the " <>
                "PATH, a path is taken from the pool's :cwd, and a script is run with its " <>
                ~s(interpreter, e.g. command: ["node", "worker.js"])
          }
      end

    {[emit.(check)], check.status == :ok}
  end

  defp interpreter_checks(config, pools, emit) do
    case find_python(config.python) do
      {:error, detail} ->
        check = %Check{
          name: "python",
          status: :error,
          detail: detail,
          hint: python_hint(config.python, pools)
        }

        {[emit.(check)], false}

      {:ok, path} ->
        found = %Check{
          name: "python",
          status: :ok,
          detail:
            if(path == config.python,
              do: path,
              else: "#{config.python} is #{path}"
            )
        }

        found = emit.(found)
        {checks, ok?} = probe_checks(config, path, pools)
        {[found | Enum.map(checks, emit)], ok?}
    end
  end

  # The "venv" check, when `python` is a virtualenv's directory, an
  # interpreter inside one, or a path meant as one that does not exist:
  # {check or nil, the venv's directory or nil}.
  defp venv_check(python, pools) do
    found = Config.find_python(python)

    venv =
      Venv.of(python) ||
        case found do
          {:ok, path} -> Venv.of(path)
          {:error, _} -> nil
        end

    case {venv, found} do
      {nil, {:error, :not_found}} ->
        if Path.basename(python) =~ ~r/^python/,
          do: {nil, nil},
          else: {venv_missing(python, pools), python}

      {nil, _} ->
        {nil, nil}

      {dir, {:ok, path}} ->
        {%Check{name: "venv", status: :ok, detail: venv_detail(dir, path)}, dir}

      {dir, {:error, problem}} ->
        {%Check{
           name: "venv",
           status: :error,
           detail: Venv.describe(dir, problem),
           hint: venv_hint(dir, problem, pools)
         }, dir}
    end
  end

  defp venv_missing(dir, pools) do
    %Check{
      name: "venv",
      status: :error,
      detail: "#{dir} does not exist (expected an interpreter, or a virtualenv directory)",
      hint:
        "create the virtualenv: python3 -m venv #{dir} && #{dir}/bin/pip install msgpack; " <>
          "or #{set_python(pools)} an existing interpreter or virtualenv"
    }
  end

  defp venv_hint(dir, :no_interpreter, pools) do
    "make it a virtualenv: python3 -m venv #{dir} && #{dir}/bin/pip install msgpack; " <>
      "or #{set_python(pools)} an interpreter"
  end

  defp venv_hint(dir, _broken_or_does_not_run, _pools) do
    "recreate it with an installed Python: python3 -m venv --clear #{dir} && " <>
      "#{dir}/bin/pip install msgpack (and your adapter's requirements)"
  end

  defp set_python(%{source: :flag}), do: "pass --python"
  defp set_python(%{names: names}), do: "set the :python option of pool #{names} to"

  # What pyvenv.cfg says: the version, and whether the system's packages
  # are visible (which is where a codec may come from).
  defp venv_detail(dir, interpreter) do
    cfg =
      case File.read(Path.join(dir, "pyvenv.cfg")) do
        {:ok, text} ->
          for line <- String.split(text, "\n"),
              [key, value] <- [String.split(line, "=", parts: 2)],
              into: %{},
              do: {String.trim(key), String.trim(value)}

        {:error, _} ->
          %{}
      end

    made =
      case cfg["version"] || cfg["version_info"] do
        nil -> "no pyvenv.cfg"
        version -> "Python #{version}"
      end

    system =
      if cfg["include-system-site-packages"] == "true", do: ", system site-packages", else: ""

    "#{short_path(dir)}: a virtualenv (#{made}#{system}), runs #{Path.relative_to(interpreter, dir)}"
  end

  # As Snakepit.Pool finds it (Snakepit.Config.find_python/1).
  defp find_python(python) do
    case Snakepit.Config.find_python(python) do
      {:ok, found} ->
        {:ok, found}

      {:error, :not_on_path} ->
        {:error, "#{python} was not found on the PATH (#{System.get_env("PATH", "")})"}

      {:error, :not_found} ->
        {:error, "#{python} does not exist"}

      {:error, problem} ->
        {:error, Venv.describe(python, problem)}
    end
  end

  @install "(Debian/Ubuntu: apt-get install python3 python3-pip)"

  defp python_hint(_python, %{source: :flag}) do
    "pass --python the path of a Python >= #{min_python()}, or install one #{@install}"
  end

  defp python_hint(python, %{source: :demo}) do
    "install Python >= #{min_python()} as #{python} on the PATH #{@install}, or set your " <>
      ~s(pools' :python to an interpreter: config :snakepit, pools: [default: [adapter: "...", ) <>
      ~s(python: "/usr/bin/python3"]]; try one with `mix snakepit.doctor --python PATH`)
  end

  defp python_hint(python, %{names: names}) do
    first = names |> String.split(",") |> hd() |> String.trim_leading(":")

    "install Python >= #{min_python()} #{@install}" <>
      if(String.contains?(python, "/"), do: "", else: " on the PATH as #{python}") <>
      ", or set the :python option of pool #{names} to an interpreter's path, " <>
      ~s(e.g. config :snakepit, pools: [#{first}: [python: "/usr/bin/python3", ...]])
  end

  defp min_python, do: "#{elem(@min_python, 0)}.#{elem(@min_python, 1)}"

  # One interpreter run prints, one per line, tab-separated: its version,
  # then for each module "name, ok|missing, version or error, file".
  # It must run on any Python, so that an old one is reported as such.
  @probe_script """
  import sys
  # -c puts the working directory first on sys.path; workers do not have it.
  if sys.path and sys.path[0] in ('', '.'):
      del sys.path[0]
  def line(*cells):
      sys.stdout.write('\\t'.join([str(c).replace('\\t', ' ').replace('\\n', ' ') for c in cells]) + '\\n')
  line('python', '%d.%d.%d' % tuple(sys.version_info[:3]), sys.executable)
  if sys.version_info[:2] >= (3, 0):
      for name in ('snakepit_bridge.codec', 'msgpack', 'ormsgpack', 'numpy'):
          try:
              mod = __import__(name, fromlist=['_'])
          except BaseException as e:
              line(name, 'missing', '%s: %s' % (type(e).__name__, e), '')
              continue
          version = getattr(mod, '__version__', None) or getattr(mod, 'version', None) or getattr(mod, 'NAME', '')
          if isinstance(version, tuple):
              version = '.'.join([str(v) for v in version])
          line(name, 'ok', version, getattr(mod, '__file__', '') or '')
  """

  defp probe_checks(config, python, pools) do
    case probe(config, python) do
      {:ok, %{"python" => {version, executable}} = found} ->
        version_check({version, executable}, found, config, python, pools)

      {:error, detail} ->
        {[
           %Check{
             name: "python version",
             status: :error,
             detail: "could not run #{python}: #{detail}",
             hint:
               if(pools[:venv],
                 do: venv_hint(pools.venv, :does_not_run, pools),
                 else: python_hint(config.python, pools)
               )
           }
         ], false}
    end
  end

  defp version_check({version, executable}, found, config, python, pools) do
    parsed = version |> String.split(".") |> Enum.map(&String.to_integer/1)

    # A shim (pyenv) or a link runs another file: say which.
    runs =
      if executable in ["", python] or Path.expand(executable) == resolve_links(python),
        do: "",
        else: ", runs #{executable}"

    if List.to_tuple(Enum.take(parsed, 2)) >= @min_python do
      check = %Check{
        name: "python version",
        status: :ok,
        detail: "#{version} (>= #{min_python()} required)#{runs}"
      }

      {modules, ok?} = module_checks(found, python, pools[:venv])
      {[check | modules], ok?}
    else
      {[
         %Check{
           name: "python version",
           status: :error,
           detail: "#{python} is Python #{version}: Snakepit needs >= #{min_python()}",
           hint: python_hint(config.python, pools)
         }
       ], false}
    end
  end

  defp module_checks(found, python, venv) do
    pip =
      if venv,
        do: String.trim_trailing(Venv.pip_install(venv, "")),
        else: "#{python} -m pip install"

    requirements = Path.join(:code.priv_dir(:snakepit), "python/requirements.txt")
    priv_python = priv_python()

    # In a virtualenv: its pip, and the bridge package (which brings msgpack).
    install_codec =
      if venv,
        do:
          "#{pip} msgpack (or the bridge, which depends on it, for your " <>
            "IDE and tests too: #{pip} #{local_path(real_path(priv_python))})",
        else: "#{pip} -r #{requirements}"

    bridge =
      case found["snakepit_bridge.codec"] do
        {:ok, codec, file} ->
          dir = file |> Path.dirname() |> Path.dirname()

          if dir == priv_python do
            %Check{
              name: "snakepit_bridge",
              status: :ok,
              detail: "#{short_path(dir)} (codec: #{codec})"
            }
          else
            %Check{
              name: "snakepit_bridge",
              status: :warning,
              detail:
                "workers import snakepit_bridge from #{dir}, not from Snakepit's own " <>
                  "#{priv_python} (codec: #{codec})",
              hint:
                "a directory of the pool's :python_path holds another snakepit_bridge, which " <>
                  "shadows Snakepit's: remove it from there (pip install it elsewhere)"
            }
          end

        {:missing, error, _} ->
          codec_missing? = error =~ "msgpack"

          %Check{
            name: "snakepit_bridge",
            status: :error,
            detail: "cannot be imported: #{error}",
            hint:
              if(codec_missing?,
                do: "install a MessagePack codec for this Python: #{install_codec}",
                else:
                  "Snakepit's #{priv_python} should hold it; reinstall Snakepit " <>
                    "(`mix deps.get`) or check the pool's :python_path and :env"
              )
          }
      end

    codec_ok? = match?({:ok, _, _}, found["msgpack"]) or match?({:ok, _, _}, found["ormsgpack"])

    msgpack =
      case found["msgpack"] do
        {:ok, version, _} ->
          %Check{name: "msgpack", status: :ok, detail: version}

        {:missing, error, _} when codec_ok? ->
          %Check{
            name: "msgpack",
            status: :warning,
            detail: "not installed (#{error}); workers use ormsgpack",
            hint: "msgpack is the bridge's declared dependency (the fallback): #{pip} msgpack"
          }

        {:missing, error, _} ->
          %Check{
            name: "msgpack",
            status: :error,
            detail: "not installed (#{error}), nor ormsgpack: workers need one of them",
            hint: install_codec
          }
      end

    ormsgpack =
      case found["ormsgpack"] do
        {:ok, version, _} ->
          %Check{name: "ormsgpack", status: :ok, detail: "#{version} (the faster codec)"}

        {:missing, error, _} ->
          %Check{
            name: "ormsgpack",
            status: :warning,
            detail: "not installed (#{error}); optional: about twice as fast as msgpack",
            hint: "#{pip} ormsgpack"
          }
      end

    numpy =
      case found["numpy"] do
        {:ok, version, _} ->
          %Check{name: "numpy", status: :ok, detail: version}

        {:missing, error, _} ->
          %Check{
            name: "numpy",
            status: :warning,
            detail: "not installed (#{error}); optional: only adapters that use it need it",
            hint: "#{pip} numpy"
          }
      end

    checks = [bridge, msgpack, ormsgpack, numpy]
    {checks, bridge.status != :error and codec_ok?}
  end

  # Runs @probe_script in `python` as a worker of `config` would run:
  # same environment, PYTHONPATH and working directory.
  defp probe(config, python) do
    env = worker_env(config)
    cmd_opts = [env: env, stderr_to_stdout: true] ++ if(config.cwd, do: [cd: config.cwd], else: [])

    task =
      Task.async(fn ->
        try do
          System.cmd(python, ["-c", @probe_script], cmd_opts)
        rescue
          e -> {:raised, Exception.message(e)}
        end
      end)

    case Task.yield(task, @probe_timeout) || Task.shutdown(task, :brutal_kill) do
      {:ok, {output, 0}} ->
        parse_probe(output)

      {:ok, {:raised, message}} ->
        {:error, message}

      {:ok, {output, status}} ->
        {:error, "exit status #{status}: #{String.trim(output)}"}

      nil ->
        {:error, "no answer within #{@probe_timeout} ms"}
    end
  end

  defp parse_probe(output) do
    found =
      for line <- String.split(output, "\n", trim: true),
          [name, status | rest] <- [String.split(line, "\t")],
          into: %{} do
        case {name, status, rest} do
          {"python", version, [executable]} -> {"python", {version, executable}}
          {name, "ok", [version, file]} -> {name, {:ok, version, file}}
          {name, _missing, [error, file]} -> {name, {:missing, error, file}}
          {name, status, _} -> {name, {:missing, status, ""}}
        end
      end

    case found do
      %{"python" => {version, _}} = found ->
        if version =~ ~r/^\d+\.\d+\.\d+$/,
          do: {:ok, found},
          else: {:error, "unexpected output: #{String.trim(output)}"}

      _ ->
        {:error, "unexpected output: #{String.trim(output)}"}
    end
  end

  @doc """
  The environment variables a worker of `config` (a validated
  `Snakepit.Config`) gets from its pool: the pool's `:env` and the
  `PYTHONPATH` that `Snakepit.Pool` builds (see "Worker environment" in
  `Snakepit.Config`).
  """
  @spec worker_env(Config.t()) :: [{String.t(), String.t()}]
  def worker_env(config), do: Snakepit.Pool.worker_env(config)

  defp resolve_links(path, hops \\ 20) do
    case :file.read_link_all(path) do
      {:ok, target} when hops > 0 ->
        path
        |> Path.dirname()
        |> Path.join(to_string(target))
        |> Path.expand()
        |> resolve_links(hops - 1)

      _ ->
        Path.expand(path)
    end
  end

  # `path` with every symbolic link in it resolved (a dependency's priv/
  # in _build links to deps/NAME/priv: the path a user knows).
  defp real_path(path) do
    parent = Path.dirname(path)

    if parent == path,
      do: path,
      else: resolve_links(Path.join(real_path(parent), Path.basename(path)))
  end

  defp priv_python, do: Path.expand(Path.join(:code.priv_dir(:snakepit), "python"))

  ## Adapters

  @doc """
  Starts a throwaway pool with `pool_opts`, `size: 1` and a unique name,
  calls `ping` and `describe`, and stops it: one check. The pool's log
  messages are left out of the log (its Python errors are in the check)
  unless `quiet: false` is given.
  """
  @spec adapter_check(atom(), keyword(), keyword()) :: Check.t()
  def adapter_check(pool, pool_opts, opts \\ []) do
    adapter = pool_opts[:adapter]
    started = System.monotonic_time(:millisecond)
    throwaway = :"snakepit_doctor_#{pool}_#{System.unique_integer([:positive])}"
    opts = Keyword.put(opts, :name, throwaway)

    result =
      with_pool(
        Keyword.merge(pool_opts, size: 1),
        fn name ->
          ready_ms = System.monotonic_time(:millisecond) - started

          # A program of any language has no built-in tools to call.
          with false <- command?(pool_opts),
               {:ok, "pong"} <- Snakepit.execute("ping", %{}, pool: name, timeout: 10_000),
               {:ok, %{"tools" => tools}} when is_map(tools) <-
                 Snakepit.execute("describe", %{}, pool: name, timeout: 10_000) do
            {:ok, ready_ms, map_size(tools)}
          else
            true -> {:ok, ready_ms, :command}
            other -> other
          end
        end,
        opts
      )

    case result do
      {:ok, ready_ms, :command} ->
        %Check{
          name: "handshake",
          status: :ok,
          detail:
            "pool #{inspect(pool)}: #{Enum.join(pool_opts[:command], " ")} runs and finishes " <>
              "its handshake in a throwaway worker (ready in #{ready_ms} ms)"
        }

      {:ok, ready_ms, tools} ->
        %Check{
          name: "adapter",
          status: :ok,
          detail:
            "pool #{inspect(pool)}: #{adapter} loads in a throwaway worker " <>
              "(ready in #{ready_ms} ms, ping ok, #{plural(tools, "tool")})"
        }

      {:error, %Error{} = error} ->
        # The error names the throwaway pool: it is about this one.
        error = %{error | message: String.replace(error.message, inspect(throwaway), inspect(pool))}

        %Check{
          name: if(command?(pool_opts), do: "handshake", else: "adapter"),
          status: :error,
          detail:
            if(String.starts_with?(error.message, "pool #{inspect(pool)} "),
              do: error.message,
              else: "pool #{inspect(pool)}: #{error.message}"
            ),
          hint:
            if(command?(pool_opts),
              do: command_hint(pool, pool_opts),
              else: adapter_hint(error, pool, pool_opts)
            ),
          details: error.python_traceback
        }

      other ->
        %Check{
          name: "adapter",
          status: :error,
          detail: "pool #{inspect(pool)}: #{adapter} answered unexpectedly: #{inspect(other)}",
          hint: "ping should answer \"pong\": does the adapter override ping or describe?"
        }
    end
  end

  defp adapter_hint(%Error{category: :validation, details: %{option: option}}, pool, _opts) do
    "fix the option #{inspect(option)} of pool #{inspect(pool)} (see Snakepit.Config)"
  end

  defp adapter_hint(%Error{} = error, pool, opts) do
    with {:ok, config} <- Config.validate(opts),
         [module, class] <- split_class(config.adapter) do
      pythonpath = config |> worker_env() |> List.keyfind("PYTHONPATH", 0) |> elem(1)
      cd = if config.cwd, do: "cd #{config.cwd} && ", else: ""

      where =
        case Regex.run(~r/ModuleNotFoundError: No module named '([\w.]+)'/, error.message) do
          [_, missing] ->
            if module == missing or String.starts_with?(module, missing <> "."),
              do:
                "put the directory that holds #{missing} on pool #{inspect(pool)}'s " <>
                  ":python_path (python_path: [\"/srv/app\"]), or install it into " <>
                  "#{config.python}'s environment. ",
              else:
                "the adapter imports #{missing}, which #{config.python} cannot find: install " <>
                  "it (#{config.python} -m pip install ...), or put its directory on pool " <>
                  "#{inspect(pool)}'s :python_path. "

          nil ->
            "fix the Python error above. "
        end

      where <>
        "To reproduce it outside Snakepit: #{cd}PYTHONPATH=#{pythonpath} #{config.python} -c " <>
        "'from #{module} import #{class}; #{class}()'"
    else
      _ -> "fix the error above"
    end
  end

  defp command_hint(pool, opts) do
    cd = if opts[:cwd], do: "cd #{opts[:cwd]} && ", else: ""

    "the program must write a ready frame first (see docs/other_languages.md); run it by " <>
      "hand to see what it prints: #{cd}#{Enum.join(opts[:command], " ")} 3</dev/null " <>
      "(pool #{inspect(pool)})"
  end

  # An Elixir adapter (Snakepit.Adapter) has no Python class.
  defp split_class(adapter) when is_atom(adapter), do: nil

  defp split_class(adapter) do
    case String.split(adapter, ".") |> Enum.reverse() do
      [class | module] -> [module |> Enum.reverse() |> Enum.join("."), class]
    end
  end

  @doc """
  Runs `fun.(name)` with a pool of `pool_opts` running under a unique
  `name`, then stops the pool; returns what `fun` returned, or
  `{:error, %Snakepit.Error{}}` if the pool did not start. The pool's log
  messages are dropped unless `quiet: false` is given.

  Needs Snakepit's registry: see `start_support/0`.
  """
  @spec with_pool(keyword(), (atom() -> result), keyword()) :: result | {:error, Error.t()}
        when result: term()
  def with_pool(pool_opts, fun, opts \\ []) do
    name = Keyword.get(opts, :name, :"snakepit_doctor_#{System.unique_integer([:positive])}")
    quiet? = Keyword.get(opts, :quiet, true)
    if quiet?, do: :ok = :logger.add_primary_filter(name, {&__MODULE__.drop_pool_logs/2, name})

    try do
      # A process of its own traps the exit of a pool that fails to start.
      task =
        Task.async(fn ->
          Process.flag(:trap_exit, true)

          case Snakepit.Pool.start_link(Keyword.put(pool_opts, :name, name)) do
            {:ok, pid} ->
              try do
                fun.(name)
              after
                GenServer.stop(pid, :shutdown, :infinity)
              end

            {:error, %Error{} = error} ->
              {:error, error}

            {:error, other} ->
              {:error, Error.pool("pool could not start: " <> Exception.format_exit(other))}
          end
        end)

      Task.await(task, :infinity)
    after
      if quiet?, do: _ = :logger.remove_primary_filter(name)
    end
  end

  @doc false
  # A :logger primary filter: drops the events of the throwaway pool `name`
  # (tagged with it, or naming it).
  @spec drop_pool_logs(:logger.log_event(), atom()) :: :logger.filter_return()
  def drop_pool_logs(%{msg: msg, meta: meta}, name) do
    if Map.get(meta, :snakepit_pool) == name or String.contains?(text(msg), Atom.to_string(name)),
      do: :stop,
      else: :ignore
  rescue
    _ -> :ignore
  end

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({:report, report}), do: inspect(report, limit: :infinity, printable_limit: 4096)

  defp text({format, args}) when is_list(args),
    do: format |> :io_lib.format(args) |> IO.chardata_to_string()

  defp text(_), do: ""

  @doc """
  Makes pools startable without starting Snakepit's application (which
  would start the configured pools): loads it and starts its registry if
  it is not running. Returns a function that undoes that.
  """
  @spec start_support() :: (() -> :ok)
  def start_support do
    {:ok, _} = Application.ensure_all_started(:logger)

    case Application.load(:snakepit) do
      :ok -> :ok
      {:error, {:already_loaded, :snakepit}} -> :ok
    end

    case Process.whereis(Snakepit.Registry) do
      nil ->
        {:ok, pid} = Registry.start_link(keys: :unique, name: Snakepit.Registry)

        fn ->
          Process.unlink(pid)
          Supervisor.stop(pid)
        end

      _pid ->
        fn -> :ok end
    end
  end

  ## Helpers

  defp pool_names(pools), do: Enum.map_join(pools, ", ", fn {name, _} -> inspect(name) end)

  defp skipped(name, pool, why),
    do: %Check{name: name, status: :skipped, detail: "pool #{inspect(pool)}: not checked, #{why}"}

  defp plural(n, word), do: "#{n} #{plural_word(n, word)}"

  defp plural_word(1, word), do: word
  defp plural_word(_n, word), do: word <> "s"

  # A directory for pip: relative to the current one when under it, as ./dir.
  defp local_path(path) do
    case short_path(path) do
      ^path -> path
      relative -> "./" <> relative
    end
  end

  # A path under the current directory, shown relative to it.
  defp short_path(path) do
    case Path.relative_to_cwd(path) do
      ^path -> path
      relative -> relative
    end
  end
end
