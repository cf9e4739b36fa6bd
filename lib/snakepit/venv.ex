defmodule Snakepit.Venv do
  @moduledoc """
  Virtualenvs as a pool's `:python`: `python: "/srv/app/.venv"` runs that
  environment's interpreter.

  A virtualenv directory (made by `python3 -m venv DIR`, `virtualenv`,
  `uv venv`, or a conda environment) holds its interpreter as
  `bin/python` or `bin/python3`. Running that file, not the Python it links
  to, is what activates the environment: Python finds `pyvenv.cfg` next to
  its `bin/` and puts the environment's `site-packages` on `sys.path`.
  Nothing else is needed (no `activate`, no `VIRTUAL_ENV`): Snakepit still
  puts its own `priv/python` (the `snakepit_bridge` package) on the
  workers' `PYTHONPATH`, and the environment must provide a MessagePack
  codec (`msgpack` or `ormsgpack`). See "Virtualenvs" in docs/python.md.
  """

  # In the order they are tried.
  @interpreters ["bin/python", "bin/python3"]

  @typedoc """
  Why a directory given as `:python` cannot run: it has no interpreter,
  or its interpreter is a symbolic link whose target is gone (the Python
  the environment was made from was removed or moved).
  """
  @type problem :: :no_interpreter | {:broken_link, link :: String.t(), target :: String.t()}

  @doc """
  The interpreter of the virtualenv directory `dir`, as an absolute path
  (relative to the current directory; symbolic links are kept, since the
  link is what makes the environment active): its `bin/python`, else its
  `bin/python3`.

      iex> Snakepit.Venv.interpreter("/proc")
      {:error, :no_interpreter}
  """
  @spec interpreter(Path.t()) :: {:ok, String.t()} | {:error, problem()}
  def interpreter(dir) do
    candidates = Enum.map(@interpreters, &Path.join(Path.expand(dir), &1))

    case Enum.find(candidates, &File.regular?/1) do
      nil -> {:error, broken_link(candidates) || :no_interpreter}
      path -> {:ok, path}
    end
  end

  defp broken_link(candidates) do
    Enum.find_value(candidates, fn path ->
      case :file.read_link_all(path) do
        {:ok, target} -> {:broken_link, path, to_string(target)}
        {:error, _} -> nil
      end
    end)
  end

  @doc """
  The virtualenv that `python` (a pool's `:python`, or the interpreter it
  was found to be) belongs to: `python` itself when it is a directory; the
  directory above `bin/` for an interpreter in a `bin/` that has a
  `pyvenv.cfg` beside it; else `nil` (a system Python, a name on the PATH).

      iex> Snakepit.Venv.of("python3")
      nil
  """
  @spec of(String.t()) :: String.t() | nil
  def of(python) do
    root = python |> Path.dirname() |> Path.dirname()

    cond do
      not String.contains?(python, "/") -> nil
      File.dir?(python) -> Path.expand(python)
      Path.basename(Path.dirname(python)) != "bin" -> nil
      File.regular?(Path.join(root, "pyvenv.cfg")) -> Path.expand(root)
      true -> nil
    end
  end

  @doc """
  What is wrong with the directory `dir` given as `:python`, in words, with
  what was expected: for error messages.

      iex> Snakepit.Venv.describe("/srv/env", :no_interpreter)
      "/srv/env is a directory without bin/python or bin/python3: expected an interpreter, or a virtualenv directory (python3 -m venv /srv/env makes one)"
  """
  @spec describe(String.t(), problem()) :: String.t()
  def describe(dir, :no_interpreter) do
    "#{dir} is a directory without bin/python or bin/python3: expected an interpreter, " <>
      "or a virtualenv directory (python3 -m venv #{dir} makes one)"
  end

  def describe(dir, {:broken_link, link, target}) do
    "the virtualenv #{dir} cannot run: #{link} links to #{target}, which does not exist " <>
      "(the Python it was made from was removed or moved; recreate it: " <>
      "python3 -m venv --clear #{dir})"
  end

  @doc """
  The command that installs `packages` into the virtualenv `dir`: its
  `bin/pip`, or `bin/python -m pip` when it has no `bin/pip`.
  """
  @spec pip_install(String.t(), String.t()) :: String.t()
  def pip_install(dir, packages) do
    pip = Path.join(dir, "bin/pip")

    if File.exists?(pip),
      do: "#{pip} install #{packages}",
      else: "#{Path.join(dir, "bin/python")} -m pip install #{packages}"
  end
end
