defmodule Mix.Tasks.Snakepit.Gen.Adapter do
  @shortdoc "Generates a Python adapter, its pytest file and requirements"

  @moduledoc """
  Generates a Python adapter for a Snakepit pool in the current project,
  with its tests and requirements file, ready to run.

      mix snakepit.gen.adapter NAME [--path DIR] [--force]

  `NAME` is the adapter's Python package, in snake_case (`text_tools`); it
  must be a valid Python identifier, not a Python keyword, and not the name
  of a standard library module or of a package workers import (`json`,
  `snakepit_bridge`, `msgpack`...): the pool's `:python_path` comes first on
  `sys.path`, so such a package would shadow the real one. The files, in
  `DIR/NAME/` (`DIR` defaults to `priv/python`):

  - `__init__.py`;
  - `adapter.py`: the adapter class, `NAME` in CamelCase with `Adapter`
    (`TextToolsAdapter`), with three example tools (`greet`,
    `word_count`, and `countdown`, a generator that streams);
  - `test_adapter.py`: pytest tests that call its tools directly
    (`python -m pytest DIR/NAME`);
  - `requirements.txt`: what the adapter needs in the interpreter that runs
    it (`msgpack`), `pytest`, and how to install `snakepit_bridge` (not on
    PyPI) from Snakepit's `priv/python`.

  Existing files are not overwritten: the task stops and names them, unless
  `--force` is given. It then prints the next steps: a virtualenv with the
  requirements, the tests, and the pool to add to `config/runtime.exs`,
  whose adapter is `"NAME.adapter.NameAdapter"`, `:python_path` is `DIR`
  and `:python` is the virtualenv's directory (see `Snakepit.Venv`).

  ## Options

    * `--path DIR` - the directory that gets the package (default
      `priv/python`); it goes on the pool's `:python_path`
    * `--force` - overwrite existing files
  """

  use Mix.Task

  require Mix.Generator

  @switches [path: :string, force: :boolean]
  @templates Path.expand("../../../priv/templates/gen_adapter", __DIR__)
  # Each template is compiled into this module: a broken one fails the build.
  @files ~w(__init__.py adapter.py test_adapter.py requirements.txt)

  # (The templates read `assigns.key`, not `@key`: that would call EEx at
  # run time, which Snakepit does not depend on.)
  for file <- @files do
    name = String.replace(file, ~r/\W/, "_")
    @external_resource Path.join(@templates, file <> ".eex")
    Mix.Generator.embed_template(String.to_atom(name),
      from_file: Path.join(@templates, file <> ".eex")
    )

    defp render(unquote(file), assigns), do: unquote(:"#{name}_template")(assigns)
  end

  # Python's keywords, and the standard library's modules whose names are
  # snake_case (sys.stdlib_module_names of Python 3.11), plus what workers
  # import: a package of one of these names on :python_path would shadow it.
  @keywords ~w(and as assert async await break class continue def del elif else except finally
               for from global if import in is lambda nonlocal not or pass raise return try
               while with yield)
  @shadowed ~w(
    abc aifc antigravity argparse array ast asynchat asyncio asyncore atexit audioop base64
    bdb binascii bisect builtins bz2 calendar cgi cgitb chunk cmath cmd code codecs codeop
    collections colorsys compileall concurrent configparser contextlib contextvars copy copyreg
    crypt csv ctypes curses dataclasses datetime dbm decimal difflib dis distutils doctest email
    encodings ensurepip enum errno faulthandler fcntl filecmp fileinput fnmatch fractions ftplib
    functools gc genericpath getopt getpass gettext glob graphlib grp gzip hashlib heapq hmac html
    http idlelib imaplib imghdr imp importlib inspect io ipaddress itertools json keyword lib2to3
    linecache locale logging lzma mailbox mailcap marshal math mimetypes mmap modulefinder msilib
    msvcrt multiprocessing netrc nis nntplib nt ntpath nturl2path numbers opcode operator optparse
    os ossaudiodev pathlib pdb pickle pickletools pipes pkgutil platform plistlib poplib posix
    posixpath pprint profile pstats pty pwd py_compile pyclbr pydoc pydoc_data pyexpat queue
    quopri random re readline reprlib resource rlcompleter runpy sched secrets select selectors
    shelve shlex shutil signal site smtpd smtplib sndhdr socket socketserver spwd sqlite3
    sre_compile sre_constants sre_parse ssl stat statistics string stringprep struct subprocess
    sunau symtable sys sysconfig syslog tabnanny tarfile telnetlib tempfile termios test textwrap
    this threading time timeit tkinter token tokenize tomllib trace traceback tracemalloc tty
    turtle turtledemo types typing unicodedata unittest urllib uu uuid venv warnings wave weakref
    webbrowser winreg winsound wsgiref xdrlib xml xmlrpc zipapp zipfile zipimport zlib zoneinfo
    snakepit_bridge msgpack ormsgpack numpy pytest launcher
  )

  @impl Mix.Task
  def run(args) do
    {opts, rest} = OptionParser.parse!(args, strict: @switches)

    name =
      case rest do
        [name] -> name
        _ -> Mix.raise("usage: mix snakepit.gen.adapter NAME [--path DIR] [--force]")
      end

    check_name!(name)
    dir = Keyword.get(opts, :path, "priv/python")
    package = Path.join(dir, name)
    assigns = assigns(name, dir)
    targets = Enum.map(@files, &{&1, Path.join(package, &1)})

    existing = for {_file, path} <- targets, File.exists?(path), do: path

    if existing != [] and not Keyword.get(opts, :force, false) do
      Mix.raise(
        "snakepit.gen.adapter: not overwriting " <>
          Enum.join(existing, ", ") <> " (use --force to overwrite)"
      )
    end

    Enum.each(targets, fn {file, path} ->
      true = Mix.Generator.create_file(path, render(file, assigns), force: true)
    end)

    Mix.shell().info(next_steps(assigns))
  end

  defp check_name!(name) do
    cond do
      not (name =~ ~r/^[a-z][a-z0-9_]*$/) ->
        Mix.raise(
          "snakepit.gen.adapter: #{inspect(name)} is not a snake_case Python identifier " <>
            "(lowercase letters, digits and _, starting with a letter), e.g. text_tools"
        )

      name in @keywords ->
        Mix.raise("snakepit.gen.adapter: #{inspect(name)} is a Python keyword")

      name in @shadowed ->
        Mix.raise(
          "snakepit.gen.adapter: #{inspect(name)} is the name of a module workers may import " <>
            "(the standard library's, or Snakepit's): a package of that name on :python_path " <>
            "would shadow it. Pick another name, e.g. my_#{name}"
        )

      true ->
        :ok
    end
  end

  defp assigns(name, dir) do
    class = Macro.camelize(name)
    class = if String.ends_with?(class, "Adapter"), do: class, else: class <> "Adapter"

    %{
      name: name,
      class: class,
      dir: Path.join(dir, name),
      path: dir,
      app: Mix.Project.config()[:app],
      bridge: bridge_path()
    }
  end

  # Snakepit's priv/python, where the bridge package is: relative to the
  # current directory when under it (./deps/snakepit/priv/python).
  defp bridge_path do
    real = real_path(Path.join(to_string(:code.priv_dir(:snakepit)), "python"))

    case Path.relative_to_cwd(real) do
      ^real -> real
      relative -> "./" <> relative
    end
  end

  defp real_path(path) do
    parent = Path.dirname(path)
    path = if parent == path, do: path, else: Path.join(real_path(parent), Path.basename(path))

    case :file.read_link_all(path) do
      {:ok, target} -> real_path(Path.expand(to_string(target), Path.dirname(path)))
      {:error, _} -> path
    end
  end

  defp next_steps(a) do
    python_path =
      case a.path do
        "priv/" <> _ when a.app != nil -> ~s|Application.app_dir(#{inspect(a.app)}, "#{a.path}")|
        path -> ~s|Path.expand("#{path}")|
      end

    """

    Next steps:

      1. A virtualenv with the bridge and the adapter's requirements:

           python3 -m venv .venv
           .venv/bin/pip install #{a.bridge} -r #{a.dir}/requirements.txt

      2. The adapter's tests:

           .venv/bin/python -m pytest #{a.dir}

      3. A pool that runs it, in config/runtime.exs (python: the venv's
         directory; check it with `mix snakepit.doctor`):

           config :snakepit,
             pools: [
               #{a.name}: [
                 adapter: "#{a.name}.adapter.#{a.class}",
                 python: Path.expand(".venv"),
                 python_path: [#{python_path}]
               ]
             ]

         then: Snakepit.execute("greet", %{name: "Ada"}, pool: :#{a.name})
    """
  end
end
