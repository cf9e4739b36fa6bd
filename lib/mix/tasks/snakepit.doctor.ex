defmodule Mix.Tasks.Snakepit.Doctor do
  @shortdoc "Checks that Snakepit's pools can run here (Python, codecs, NIF, adapters)"

  @moduledoc """
  Checks that this machine can run the pools of `config :snakepit`, and
  says how to fix what it cannot.

      mix snakepit.doctor
      mix snakepit.doctor --python /opt/venv/bin/python
      mix snakepit.doctor --verbose

  Works in Snakepit's own repository and in a project that depends on it.
  It reads the configuration (`config/*.exs`, `config/runtime.exs`) without
  starting the application: the configured pools are not started. It
  checks, one line each:

  - `config :snakepit` is valid, and which pools it has. With none, the
    bundled demo adapter (`snakepit_bridge.examples.demo.DemoAdapter`) is
    checked instead, and the output says so;
  - the NIF (`priv/native/libsnakepit_nif.so`) loads and the worker
    shepherd (`priv/native/snakepit_shepherd`) is executable;
  - a pool whose `:python` is a virtualenv (its directory or an
    interpreter in it): the directory exists and has an interpreter, and
    each fix installs with its own `pip` (`<venv>/bin/pip install msgpack`);
  - each pool's Python: found (its `:python`, default `python3` on the
    PATH), version >= 3.9, and, run with the environment, `PYTHONPATH` and
    working directory its workers get, that it imports `snakepit_bridge`
    from Snakepit's `priv/python` and a MessagePack codec: `msgpack` or
    `ormsgpack` (one is required; `ormsgpack` is faster, a warning if
    missing), and `numpy` (optional, a warning);
  - each pool's adapter, in a throwaway pool of one worker (the pool's
    options, `size: 1`, a unique name): started, which proves the adapter
    imports and the handshake works, then called with `ping` and
    `describe`, then stopped. A failure shows the Python error;
  - for a pool that runs a `:command` instead of Python: its program is
    found (`command`) and finishes its handshake in a throwaway pool
    (`handshake`); no Python is checked for it.

  Each failure comes with a `fix:` line. The task exits with status 1 if a
  required check failed (`✗`); warnings (`!`) do not fail it.

  ## Options

    * `--python PATH` - check this interpreter instead of the pools' `:python`
      (`:command` pools keep their program)
    * `--verbose` - show the Python traceback of a failed adapter, and the
      throwaway pools' log messages (hidden by default)

  ## Example

  In Snakepit's own repository, which configures no pool:

      $ mix snakepit.doctor
      Snakepit doctor: snakepit 0.1.0, Elixir 1.14.0, OTP 25
      No pools in config :snakepit: checking the bundled demo adapter snakepit_bridge.examples.demo.DemoAdapter instead.
      ✓ native library   _build/dev/lib/snakepit/priv/native/libsnakepit_nif.so loaded
      ✓ shepherd         _build/dev/lib/snakepit/priv/native/snakepit_shepherd is executable
      ✓ python           python3 is /root/.pyenv/shims/python3
      ✓ python version   3.11.7 (>= 3.9 required), runs /root/.pyenv/versions/3.11.7/bin/python3
      ✓ snakepit_bridge  _build/dev/lib/snakepit/priv/python (codec: ormsgpack)
      ✓ msgpack          1.2.4
      ✓ ormsgpack        1.13.1 (the faster codec)
      ! numpy            not installed (ModuleNotFoundError: No module named 'numpy'); optional: only adapters that use it need it
                         fix: /root/.pyenv/shims/python3 -m pip install numpy
      ✓ adapter          pool :demo: snakepit_bridge.examples.demo.DemoAdapter loads in a throwaway worker (ready in 139 ms, ping ok, 9 tools)
      All required checks passed (1 warning).

  Without python3 on the PATH:

      $ mix snakepit.doctor
      ...
      ✗ python           python3 was not found on the PATH (/usr/local/bin:/bin)
                         fix: install Python >= 3.9 as python3 on the PATH (Debian/Ubuntu: apt-get install python3 python3-pip), or set your pools' :python to an interpreter: config :snakepit, pools: [default: [adapter: "...", python: "/usr/bin/python3"]]; try one with `mix snakepit.doctor --python PATH`
      - adapter          pool :demo: not checked, its Python is not usable
      ** (Mix) snakepit.doctor: 1 required check failed (✗ above)

  With pools configured, the Python checks are grouped by environment
  ("Python of pools :default, :ml:") and each pool's adapter gets its line;
  a broken adapter shows the Python error and how to reproduce it:

      ✗ adapter          pool :ml could not start its workers: adapter "my_pkg.ml.Adapter" failed to load: ModuleNotFoundError: No module named 'torch'
                         fix: the adapter imports torch, which python3 cannot find: install it (python3 -m pip install ...), or put its directory on pool :ml's :python_path. To reproduce it outside Snakepit: PYTHONPATH=/srv/ml:/srv/app/_build/prod/lib/snakepit/priv/python python3 -c 'from my_pkg.ml import Adapter; Adapter()'

  The checks are functions of `Snakepit.Doctor`.
  """

  use Mix.Task

  alias Snakepit.Doctor
  alias Snakepit.Doctor.Check

  @switches [python: :string, verbose: :boolean]
  @name_width 17

  @impl Mix.Task
  def run(args) do
    {opts, rest} = OptionParser.parse!(args, strict: @switches)
    if rest != [], do: Mix.raise("snakepit.doctor takes no arguments, got: #{Enum.join(rest, " ")}")

    # Compiles if needed and loads the configuration, runtime.exs included,
    # without starting any application.
    Mix.Task.run("app.config", [])
    verbose? = Keyword.get(opts, :verbose, false)

    info(
      "Snakepit doctor: snakepit #{Application.spec(:snakepit, :vsn) || "?"}, " <>
        "Elixir #{System.version()}, OTP #{System.otp_release()}"
    )

    checks =
      Doctor.run(
        python: opts[:python],
        quiet: not verbose?,
        on_note: &info/1,
        on_check: &print_check(&1, verbose?)
      )

    failed = Enum.count(checks, &(&1.status == :error))
    warnings = Enum.count(checks, &(&1.status == :warning))

    if failed > 0 do
      Mix.raise(
        "snakepit.doctor: #{failed} required #{if failed == 1, do: "check", else: "checks"} " <>
          "failed (✗ above)"
      )
    else
      info(
        "All required checks passed" <>
          if(warnings > 0, do: " (#{warnings} #{plural(warnings, "warning")}).", else: ".")
      )
    end
  end

  # One check as printed: a line, and the fix (and details) indented below.
  @spec format_check(Check.t(), boolean()) :: IO.chardata()
  defp format_check(%Check{} = check, verbose?) do
    {mark, color} =
      case check.status do
        :ok -> {"✓", :green}
        :error -> {"✗", :red}
        :warning -> {"!", :yellow}
        :skipped -> {"-", :faint}
      end

    indent = String.duplicate(" ", @name_width + 2)
    name = String.pad_trailing(check.name, @name_width - 1)
    [first | more] = String.split(check.detail, "\n")
    detail = Enum.join([first | Enum.map(more, &(indent <> &1))], "\n")

    hint = if check.hint, do: ["\n", indent, "fix: ", check.hint], else: []

    details =
      if verbose? and check.details,
        do: ["\n" | Enum.map(String.split(check.details, "\n", trim: true), &[indent, &1, "\n"])],
        else: []

    IO.ANSI.format([color, mark, :reset, " ", name, " ", detail, hint, details])
  end

  defp print_check(check, verbose?), do: Mix.shell().info(format_check(check, verbose?))

  defp info(message), do: Mix.shell().info(message)

  defp plural(1, word), do: word
  defp plural(_, word), do: word <> "s"
end
