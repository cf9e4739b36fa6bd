defmodule Mix.Tasks.Compile.SnakepitNative do
  # Defined here, not under lib/: a compiler must exist before lib/ is compiled.
  @moduledoc """
  Builds Snakepit's Rust crates with cargo and installs the NIF as
  `priv/native/libsnakepit_nif.so` and the worker shepherd as
  `priv/native/snakepit_shepherd`.

  Cargo runs only when a file under `native/` (or the workspace's `Cargo.toml`
  / `Cargo.lock`) is newer than an installed file. Each new file is written
  beside the old one and renamed over it: overwriting a loaded shared object
  (or a running executable) in place can crash it.

  Environment: `SNAKEPIT_CARGO` names the cargo binary (default: `cargo` on
  the PATH, then `~/.cargo/bin/cargo`).
  """
  use Mix.Task.Compiler

  @artifacts ["libsnakepit_nif.so", "snakepit_shepherd"]

  @impl true
  def run(_args) do
    root = Path.dirname(__ENV__.file)
    installed = Enum.map(@artifacts, &Path.join([root, "priv", "native", &1]))

    if Enum.any?(installed, &stale?(root, &1)) do
      build(root)
      {:ok, []}
    else
      {:noop, []}
    end
  end

  @impl true
  def clean do
    File.rm_rf!(Path.join([Path.dirname(__ENV__.file), "priv", "native"]))
    :ok
  end

  defp stale?(root, installed) do
    case File.stat(installed, time: :posix) do
      {:ok, %{mtime: built}} -> Enum.any?(sources(root), &(mtime(&1) > built))
      {:error, _} -> true
    end
  end

  defp sources(root) do
    Path.wildcard(Path.join(root, "native/**/*.{rs,toml}")) ++
      Enum.map(["Cargo.toml", "Cargo.lock"], &Path.join(root, &1))
  end

  defp mtime(path) do
    case File.stat(path, time: :posix) do
      {:ok, %{mtime: t}} -> t
      {:error, _} -> 0
    end
  end

  defp build(root) do
    cargo = cargo!()
    args = ["build", "--release", "--locked", "-p", "snakepit_nif", "-p", "snakepit_shepherd"]
    Mix.shell().info("Compiling Snakepit native core (cargo #{Enum.join(args, " ")})")

    case System.cmd(cargo, args, cd: root, stderr_to_stdout: true) do
      {_out, 0} ->
        for name <- @artifacts do
          install(
            Path.join([root, "target", "release", name]),
            Path.join([root, "priv", "native", name])
          )
        end

      {out, status} ->
        Mix.raise("""
        cargo failed (exit #{status}) building Snakepit's native core:

        #{out}
        """)
    end
  end

  defp install(built, installed) do
    File.mkdir_p!(Path.dirname(installed))
    tmp = installed <> ".tmp#{System.unique_integer([:positive])}"
    File.cp!(built, tmp)
    File.chmod!(tmp, File.stat!(built).mode)
    File.rename!(tmp, installed)
  end

  defp cargo! do
    candidates = [
      System.get_env("SNAKEPIT_CARGO"),
      System.find_executable("cargo"),
      Path.expand("~/.cargo/bin/cargo")
    ]

    Enum.find(candidates, &(&1 && File.exists?(&1))) ||
      Mix.raise("""
      Snakepit needs cargo (Rust >= 1.91) to build its native core, and none was found.
      Install Rust with rustup (https://rustup.rs) or set SNAKEPIT_CARGO to the cargo binary.
      """)
  end
end

defmodule Snakepit.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :snakepit,
      version: @version,
      elixir: "~> 1.14",
      description:
        "Pools of long-lived Python (or any) worker processes, driven through a Rust NIF",
      compilers: [:snakepit_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      package: package(),
      aliases: [dialyzer: &dialyzer/1],
      # mix snakepit.gen.adapter compiles its templates with EEx at build
      # time (Mix.Generator.embed_template/2); nothing calls EEx at run time.
      xref: [exclude: [EEx]],
      preferred_cli_env: [dialyzer: :dev]
    ]
  end

  def application do
    [extra_applications: [:logger, :crypto], mod: {Snakepit.Application, []}]
  end

  # The Hex package: what a user needs to build Snakepit from source
  # (`mix compile` runs cargo on the workspace), and no build output: not
  # cargo's target/, not priv/native/ (the NIF and shepherd `mix compile`
  # installs), not Python's caches. Hex takes a listed directory whole, hidden
  # files included, so the trees that can hold build output are listed by
  # their sources. test/snakepit/packaging_test.exs checks both.
  defp package do
    [
      licenses: ["Apache-2.0"],
      # No public repository yet: add its address here ("GitHub" => url).
      links: %{},
      files: ~w(
        mix.exs .formatter.exs README.md LICENSE CHANGELOG.md lib docs
        Cargo.toml Cargo.lock native/*/Cargo.toml native/*/src native/*/tests native/*/examples
        priv/python/pyproject.toml priv/python/requirements*.txt priv/python/snakepit_bridge/**/*.py
        priv/python/snakepit_bridge/py.typed priv/python/launcher/*.py priv/python/build_backend/*.py
        priv/templates/gen_adapter/*.eex
      )
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  # `mix dialyzer`: OTP's dialyzer (no dialyxir here), with the PLT of OTP and
  # Elixir cached under _build. Fails when dialyzer reports anything. Mix is
  # in the PLT for the tasks under lib/mix/tasks; the PLT's name says which
  # apps it holds, so that a PLT built before one was added is not reused.
  defp dialyzer(_args) do
    Mix.Task.run("compile", [])
    elixir_ebin = :code.lib_dir(:elixir, :ebin) |> to_string()
    logger_ebin = :code.lib_dir(:logger, :ebin) |> to_string()
    mix_ebin = :code.lib_dir(:mix, :ebin) |> to_string()
    otp = System.otp_release()

    plt =
      Path.join(
        Mix.Project.build_path(),
        "snakepit-otp#{otp}-elixir#{System.version()}-logger-mix.plt"
      )

    unless File.exists?(plt) do
      Mix.shell().info("Building the dialyzer PLT (once, ~1 min): #{plt}")

      run_dialyzer!(
        ["-pa", elixir_ebin, "--build_plt", "--output_plt", plt, "--apps"] ++
          ~w(erts kernel stdlib compiler crypto) ++ [elixir_ebin, logger_ebin, mix_ebin],
        "building the PLT"
      )
    end

    run_dialyzer!(
      ["-pa", elixir_ebin, "--plt", plt, "--no_check_plt"] ++
        ~w(-Wunmatched_returns -Werror_handling -Wunknown) ++
        [Mix.Project.compile_path()],
      "analysis"
    )
  end

  defp run_dialyzer!(args, what) do
    dialyzer =
      System.find_executable("dialyzer") ||
        Mix.raise("dialyzer not found (apt-get install erlang-dialyzer)")

    case System.cmd(dialyzer, args, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("dialyzer #{what} failed (exit #{status})")
    end
  end
end
